//! docs/CONFIGURATION.md and docs/SENDERS.md against the parser `ferry serve` uses: every TOML
//! example parses, every key the parser accepts is in the reference and every key the reference
//! lists is accepted, and every gate, notifier, store and sender has an example.
//!
//! The parser's key sets are read from its own refusals: a probe key `zz_probe` put into a table
//! is refused by `deny_unknown_fields` with "expected one of `a`, `b`, …", the keys it accepts.

use std::collections::BTreeSet;
use std::path::Path;

use ferry_core::config::Config;

const PROBE: &str = "zz_probe";

/// Registries every fragment example may use.
const REGISTRIES: &str = "[registries.\"build.example.com\"]\n[registries.\"dev.example.com\"]\n\
    [registries.\"staging.example.com\"]\n[registries.\"prod.example.com\"]\n";

/// A file with one pipeline of one stage; `top`, `server`, … are inserted into that table.
#[derive(Default)]
struct Probe {
    top: &'static str,
    tables: &'static str,
    source: &'static str,
    registry: &'static str,
    pipeline: &'static str,
    stage: &'static str,
}

impl Probe {
    fn text(&self) -> String {
        format!(
            "{top}\n{tables}\n[registries.\"build.example.com\"]\n{registry}\n[registries.\"dev.example.com\"]\n\
             [sources.generic]\nsecret_env = \"S\"\n{source}\n\
             [[pipelines]]\nname = \"p\"\nsource = \"build.example.com/shop/api\"\n{pipeline}\n\
             [[pipelines.stages]]\nname = \"dev\"\ntarget = \"dev.example.com/shop/api\"\n{stage}\n",
            top = self.top,
            tables = self.tables,
            registry = self.registry,
            source = self.source,
            pipeline = self.pipeline,
            stage = self.stage,
        )
    }
}

/// Each table of the reference (its `<!-- reference: NAME -->` marker) and a file whose only
/// problem is an unknown key `zz_probe` in that table; `tagged`: the table's `kind` chooses the
/// variant, so `kind` is accepted besides what the error lists.
fn probes() -> Vec<(&'static str, Probe, bool)> {
    let p = |name, probe| (name, probe, false);
    vec![
        p("top", Probe { top: "zz_probe = 1", ..Probe::default() }),
        p("server", Probe { tables: "[server]\nzz_probe = 1", ..Probe::default() }),
        p("registries", Probe { registry: "zz_probe = 1", ..Probe::default() }),
        p("sources", Probe { source: "zz_probe = 1", ..Probe::default() }),
        p("pipelines", Probe { pipeline: "zz_probe = 1", ..Probe::default() }),
        p(
            "pipelines.azure_devops",
            Probe { pipeline: "[pipelines.azure_devops]\nbuild_definition = \"b\"\nzz_probe = 1", ..Probe::default() },
        ),
        p("pipelines.stages", Probe { stage: "zz_probe = 1", ..Probe::default() }),
        (
            "notify.webhook",
            Probe {
                stage: "notify = { kind = \"webhook\", url = \"https://d.example/h\", zz_probe = 1 }",
                ..Probe::default()
            },
            true,
        ),
        (
            "notify.app-service",
            Probe {
                stage: "notify = { kind = \"app-service\", subscription = \"s\", resource_group = \"g\", app = \"a\", zz_probe = 1 }",
                ..Probe::default()
            },
            true,
        ),
        (
            "notify.kubernetes",
            Probe {
                stage: "notify = { kind = \"kubernetes\", namespace = \"n\", deployment = \"d\", container = \"c\", zz_probe = 1 }",
                ..Probe::default()
            },
            true,
        ),
        p(
            "notify.kubernetes.aks",
            Probe {
                stage: "notify = { kind = \"kubernetes\", aks = { subscription = \"s\", resource_group = \"g\", cluster = \"c\", zz_probe = 1 }, namespace = \"n\", deployment = \"d\", container = \"c\" }",
                ..Probe::default()
            },
        ),
        p("azure", Probe { tables: "[azure]\nzz_probe = 1", ..Probe::default() }),
        p("notices", Probe { tables: "[[notices]]\nkind = \"slack\"\nzz_probe = 1", ..Probe::default() }),
        p("identity", Probe { tables: "[identity]\nzz_probe = 1", ..Probe::default() }),
        p(
            "identity.oidc",
            Probe {
                tables: "[[identity.oidc]]\nissuer = \"https://idp.example\"\naudience = \"a\"\nzz_probe = 1",
                ..Probe::default()
            },
        ),
        p(
            "identity.users",
            Probe { tables: "[[identity.users]]\nname = \"n\"\ntoken_hash = \"h\"\nzz_probe = 1", ..Probe::default() },
        ),
        p(
            "identity.grants",
            Probe { tables: "[[identity.grants]]\nrole = \"viewer\"\nzz_probe = 1", ..Probe::default() },
        ),
        p("worker", Probe { tables: "[worker]\nzz_probe = 1", ..Probe::default() }),
        ("queue.sqlite", Probe { tables: "[queue]\nkind = \"sqlite\"\nzz_probe = 1", ..Probe::default() }, true),
        (
            "queue.sqs",
            Probe {
                tables: "[queue]\nkind = \"sqs\"\nurl = \"https://q.example/1/j.fifo\"\nzz_probe = 1",
                ..Probe::default()
            },
            true,
        ),
        ("ledger.sqlite", Probe { tables: "[ledger]\nkind = \"sqlite\"\nzz_probe = 1", ..Probe::default() }, true),
        (
            "ledger.dynamodb",
            Probe { tables: "[ledger]\nkind = \"dynamodb\"\ntable = \"t\"\nzz_probe = 1", ..Probe::default() },
            true,
        ),
    ]
}

/// The back-quoted names after "expected" in a serde refusal (none for "there are no fields").
fn expected_names(message: &str) -> BTreeSet<String> {
    if message.contains("there are no fields") {
        return BTreeSet::new();
    }
    let (_, list) = message.split_once("expected").unwrap_or_else(|| panic!("not an unknown-key refusal: {message}"));
    list.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

/// What the parser says about `text`, which must be refused.
fn refusal(text: &str) -> String {
    match Config::parse(text, "probe.toml") {
        Ok(_) => panic!("the parser accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

fn read_doc(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The keys of each `<!-- reference: NAME -->` table: the first cell of each row, back-quoted.
fn reference_tables(doc: &str) -> Vec<(String, BTreeSet<String>)> {
    let mut tables = Vec::new();
    let mut lines = doc.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(name) = line.strip_prefix("<!-- reference: ").and_then(|l| l.strip_suffix(" -->")) else {
            continue;
        };
        let mut keys = BTreeSet::new();
        while let Some(row) = lines.next_if(|l| l.starts_with('|')) {
            let cell = row.split('|').nth(1).unwrap_or_default().trim();
            if let Some(key) = cell.strip_prefix('`').and_then(|c| c.strip_suffix('`')) {
                assert!(keys.insert(key.to_string()), "{name}: `{key}` listed twice");
            }
        }
        assert!(!keys.is_empty() || name.ends_with("sqlite"), "{name}: a reference table without keys");
        tables.push((name.to_string(), keys));
    }
    tables
}

/// Each ```toml block of `doc` with the fragment wrapper marked before it, if any.
fn toml_blocks(doc: &str) -> Vec<(usize, Option<String>, String)> {
    let lines: Vec<&str> = doc.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() == "```toml" {
            let marker = lines[..i]
                .iter()
                .rev()
                .find(|l| !l.trim().is_empty())
                .and_then(|l| l.trim().strip_prefix("<!-- fragment: "))
                .and_then(|l| l.strip_suffix(" -->"))
                .map(str::to_string);
            let start = i + 1;
            let end = start + lines[start..].iter().position(|l| l.trim() == "```").expect("unclosed ```toml");
            blocks.push((start + 1, marker, lines[start..end].join("\n")));
            i = end;
        }
        i += 1;
    }
    blocks
}

/// A fragment inside its wrapper: `registries` (the block names these registries) or `stage`
/// (the block holds keys of a stage).
fn wrapped(marker: Option<&str>, block: &str) -> String {
    match marker {
        None => block.to_string(),
        Some("registries") => format!("{REGISTRIES}\n{block}\n"),
        Some("stage") => format!(
            "{REGISTRIES}\n[[pipelines]]\nname = \"p\"\nsource = \"build.example.com/shop/api\"\n\
             [[pipelines.stages]]\nname = \"dev\"\ntarget = \"dev.example.com/shop/api\"\n{block}\n"
        ),
        Some(other) => panic!("unknown fragment wrapper `{other}`"),
    }
}

#[test]
fn every_key_the_parser_accepts_is_in_the_reference_and_nothing_else() {
    let doc = read_doc("CONFIGURATION.md");
    let documented = reference_tables(&doc);
    let probes = probes();
    let mut problems = Vec::new();
    for (name, probe, tagged) in &probes {
        let text = probe.text();
        let error = refusal(&text);
        assert!(error.contains(PROBE), "{name}: the probe was not what the parser refused: {error}\n{text}");
        let mut accepted = expected_names(&error);
        if *tagged {
            accepted.insert("kind".into());
        }
        let Some((_, listed)) = documented.iter().find(|(table, _)| table == name) else {
            problems.push(format!("{name}: no `<!-- reference: {name} -->` table in docs/CONFIGURATION.md"));
            continue;
        };
        for missing in accepted.difference(listed) {
            problems.push(format!("{name}: the parser accepts `{missing}`, the reference does not list it"));
        }
        for extra in listed.difference(&accepted) {
            problems.push(format!("{name}: the reference lists `{extra}`, the parser refuses it"));
        }
    }
    for (table, _) in &documented {
        if !probes.iter().any(|(name, _, _)| name == table) {
            problems.push(format!("{table}: a reference table the test does not probe; add it to probes()"));
        }
    }
    assert!(problems.is_empty(), "docs/CONFIGURATION.md drifted from the parser:\n{}", problems.join("\n"));
}

#[test]
fn every_toml_example_in_the_docs_parses() {
    let mut parsed = 0;
    for name in ["CONFIGURATION.md", "SENDERS.md"] {
        for (line, marker, block) in toml_blocks(&read_doc(name)) {
            let text = wrapped(marker.as_deref(), &block);
            if let Err(e) = Config::parse(&text, &format!("docs/{name} (block at line {line})")) {
                panic!("docs/{name}:{line}: the example does not parse: {e}\n{text}");
            }
            parsed += 1;
        }
    }
    assert!(parsed >= 20, "only {parsed} examples found");
}

/// The values the parser accepts for one key, from its refusal of `zz_probe` there.
fn accepted_values(probe: Probe) -> BTreeSet<String> {
    let error = refusal(&probe.text());
    assert!(error.contains(PROBE), "{error}");
    expected_names(&error)
}

#[test]
fn every_gate_notifier_store_and_sender_has_an_example() {
    let examples: Vec<String> = ["CONFIGURATION.md", "SENDERS.md"]
        .iter()
        .flat_map(|name| toml_blocks(&read_doc(name)))
        .map(|(_, _, block)| block)
        .collect();
    let has = |needle: &str| examples.iter().any(|block| block.contains(needle));

    let gates = accepted_values(Probe { stage: "gate = \"zz_probe\"", ..Probe::default() });
    assert_eq!(gates.len(), 4, "{gates:?}");
    let kinds = accepted_values(Probe { stage: "notify = { kind = \"zz_probe\" }", ..Probe::default() });
    let queues = accepted_values(Probe { tables: "[queue]\nkind = \"zz_probe\"", ..Probe::default() });
    let ledgers = accepted_values(Probe { tables: "[ledger]\nkind = \"zz_probe\"", ..Probe::default() });
    let mut missing = Vec::new();
    for gate in &gates {
        if !has(&format!("gate = \"{gate}\"")) {
            missing.push(format!("gate = \"{gate}\""));
        }
    }
    for kind in &kinds {
        if !has(&format!("notify = {{ kind = \"{kind}\"")) {
            missing.push(format!("notify kind `{kind}`"));
        }
    }
    // SQLite is the default: its example is the absence of a table; the others need one each.
    for (table, kinds) in [("queue", &queues), ("ledger", &ledgers)] {
        for kind in kinds.iter().filter(|k| *k != "sqlite") {
            if !examples.iter().any(|b| b.contains(&format!("[{table}]\nkind = \"{kind}\""))) {
                missing.push(format!("[{table}] kind = \"{kind}\""));
            }
        }
    }

    // Senders: the parser names the ones it knows when it refuses another.
    let error = refusal(&Probe { source: "[sources.zz_probe]\nsecret_env = \"S\"", ..Probe::default() }.text());
    let known = error.split_once("known: ").unwrap_or_else(|| panic!("{error}")).1;
    let senders: Vec<&str> = known.split(", ").map(str::trim).collect();
    assert_eq!(senders.len(), 8, "{senders:?}");
    let guide = read_doc("SENDERS.md");
    for sender in senders {
        if !has(&format!("[sources.{sender}]")) {
            missing.push(format!("[sources.{sender}] example"));
        }
        if !guide.contains(&format!("/hooks/{sender}")) {
            missing.push(format!("/hooks/{sender} in SENDERS.md"));
        }
    }
    assert!(missing.is_empty(), "without an example in docs/CONFIGURATION.md or docs/SENDERS.md: {missing:?}");
}

#[test]
fn the_readme_links_both_guides() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    assert!(readme.contains("(docs/CONFIGURATION.md)") && readme.contains("(docs/SENDERS.md)"));
}

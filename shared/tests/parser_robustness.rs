//! Hostile input for every parser that reads bytes from outside: thousands of deterministic
//! mutations of the real webhook fixtures (a seeded xorshift PRNG, no extra crates) must never
//! panic, and whatever a parser accepts must hold only valid data. Deep nesting must come back as
//! an error, not a stack overflow. `fuzz/` explores the same parsers open-endedly; this file keeps
//! CI exercising them on every `cargo test`, in well under five seconds of a debug build.

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use ferry_core::config::Config;
use ferry_core::intake::{self, Parsed, Sender};
use ferry_core::registry::auth::Challenge;
use ferry_core::registry::manifest::{self, Manifest};
use ferry_core::registry::{Digest, Location, RegistryRef, Tag};
use serde_json::{Map, Number, Value};

const SENDERS: [Sender; 8] = [
    Sender::Acr,
    Sender::AzureDevops,
    Sender::Dockerhub,
    Sender::Github,
    Sender::Distribution,
    Sender::Harbor,
    Sender::Quay,
    Sender::Generic,
];

/// Mutated payloads per sender, spread over its fixtures.
const MUTATIONS_PER_SENDER: usize = 2_000;

const HEX: &str = "05b3abf2579a5eb66403cd78be557fd860633a1fe2103c7642030defe32c657f";

/// Every field name any sender reads: inserted where they do not belong, they reach branches the
/// fixtures alone never take.
const KEYS: &[&str] = &[
    "action",
    "build",
    "buildNumber",
    "container_metadata",
    "data",
    "definition",
    "digest",
    "docker_url",
    "environment",
    "event_data",
    "eventType",
    "events",
    "host",
    "id",
    "login",
    "mediaType",
    "name",
    "namespace",
    "number",
    "occur_at",
    "owner",
    "package",
    "package_type",
    "package_version",
    "push_data",
    "pushed_at",
    "registry_package",
    "release",
    "releaseDefinition",
    "deployment",
    "artifacts",
    "definitionReference",
    "version",
    "project",
    "repo_full_name",
    "repo_name",
    "repository",
    "request",
    "resource",
    "resource_url",
    "resources",
    "result",
    "specversion",
    "status",
    "tag",
    "target",
    "type",
    "updated_tags",
];

/// Raw fragments spliced into the bytes: JSON syntax, numbers no integer type holds, invalid
/// UTF-8 and escapes that decode to nothing valid.
const TOKENS: &[&[u8]] = &[
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"\\",
    b"\0",
    b"null",
    b"true",
    b"-0",
    b"1e999",
    b"-1e999",
    b"18446744073709551616",
    b"-9223372036854775809",
    b"123456789012345678901234567890123456789012345678901234567890",
    b"0.000000000000000000000000000000000000000000000001e-400",
    b"\xff\xfe",
    b"\xc3",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\"\\ud800\"",
    b"\"\\udc00\\ud800\"",
    b"\"\\u0000\"",
    b"\"\\uZZZZ\"",
    b"[]",
    b"{}",
    b"\"\"",
];

/// Strings a hostile sender would put in a field: traversal, tags and digests smuggled into a
/// repository, names at and beyond their limits, and the values that steer each parser.
fn hostile_strings() -> Vec<String> {
    let mut strings: Vec<String> = [
        "",
        " ",
        "\t\n",
        "\0",
        "..",
        "../../etc/passwd",
        "shop/../api",
        "shop//api",
        "/shop/api",
        "shop/api/",
        "Shop/API",
        "shop/api:1.8.3",
        "shop api",
        "a___b",
        "-tag",
        ".tag",
        "tag with space",
        "v1; rm -rf /",
        "sha256:",
        "sha256:nope",
        "md5:0123",
        "é",
        "🦀/🦀",
        "\u{202e}gnp.exe",
        "127.0.0.1:5001/shop/api",
        "127.0.0.1:5001/shop/api:v1",
        "evil host/shop/api",
        "push",
        "published",
        "updated",
        "container",
        "CONTAINER",
        "docker",
        "PUSH_ARTIFACT",
        "harbor.artifact.pushed",
        "1.0",
        "build.complete",
        "succeeded",
        "ms.vss-release.deployment-completed-event",
        "ms.azure-devops-release.deployment-completed-event",
        manifest::OCI_MANIFEST,
        manifest::DOCKER_LIST,
    ]
    .into_iter()
    .map(String::from)
    .collect();
    strings.extend([
        format!("sha256:{HEX}"),
        format!("sha256:{}", HEX.to_uppercase()),
        format!("sha512:{HEX}{HEX}"),
        format!("shop/api@sha256:{HEX}"),
        format!("127.0.0.1:5001/shop/api@sha256:{HEX}"),
        "a".repeat(128),
        "a".repeat(129),
        "a/".repeat(128) + "a",
        "x".repeat(16 << 10),
    ]);
    strings
}

/// xorshift64*: deterministic, so a failure names a seed that reproduces it.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// FNV-1a, to give each sender its own fixed seed.
fn seed_for(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/intake/fixtures")
}

/// The fixtures of one sender: every file whose name starts with the sender's route name.
fn fixtures(sender: Sender) -> Vec<(String, Vec<u8>)> {
    let dir = fixtures_dir();
    let mut found: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.file_name().unwrap().to_string_lossy().starts_with(sender.as_str()))
        .map(|path| (path.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&path).unwrap()))
        .collect();
    found.sort();
    assert!(!found.is_empty(), "no fixture for {} in {}", sender.as_str(), dir.display());
    found
}

/// An input as a failure message can show it: lossy, escaped, cut short.
fn show(input: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(input).escape_debug().take(2_000).collect();
    format!("{} bytes: \"{text}\"", input.len())
}

/// Calls `f`, turning a panic into a failure that shows the input which caused it.
fn no_panic<T>(what: &str, input: &[u8], f: impl FnOnce() -> T) -> T {
    panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| panic!("{what} panicked on {}", show(input)))
}

/// Pre-order walk to the `n`th node of a JSON document.
fn nth_node<'a>(value: &'a mut Value, n: &mut usize) -> Option<&'a mut Value> {
    if *n == 0 {
        return Some(value);
    }
    *n -= 1;
    match value {
        Value::Array(items) => items.iter_mut().find_map(|item| nth_node(item, n)),
        Value::Object(map) => map.values_mut().find_map(|item| nth_node(item, n)),
        _ => None,
    }
}

fn count_nodes(value: &Value) -> usize {
    1 + match value {
        Value::Array(items) => items.iter().map(count_nodes).sum(),
        Value::Object(map) => map.values().map(count_nodes).sum(),
        _ => 0,
    }
}

fn nested(depth: usize, leaf: Value) -> Value {
    (0..depth).fold(leaf, |inner, _| Value::Array(vec![inner]))
}

/// A value to put where another was: null, the same data as another type, a hostile string, an
/// extreme number, or deep nesting.
fn replacement(rng: &mut Rng, old: &Value, strings: &[String]) -> Value {
    match rng.below(8) {
        0 => Value::Null,
        // The same content, another JSON type.
        1 => match old {
            Value::String(s) => match s.parse::<u64>() {
                Ok(n) => Value::Number(n.into()),
                Err(_) => Value::Array(vec![Value::String(s.clone())]),
            },
            Value::Number(n) => Value::String(n.to_string()),
            Value::Object(map) => Value::Array(map.values().cloned().collect()),
            Value::Array(items) => {
                Value::Object(items.iter().enumerate().map(|(i, v)| (i.to_string(), v.clone())).collect())
            }
            Value::Bool(b) => Value::String(b.to_string()),
            Value::Null => Value::Object(Map::new()),
        },
        2..=4 => Value::String(rng.pick(strings).clone()),
        5 => Value::Number(match rng.below(5) {
            0 => u64::MAX.into(),
            1 => i64::MIN.into(),
            2 => Number::from_f64(f64::MAX).unwrap(),
            3 => Number::from_f64(-0.0).unwrap(),
            _ => Number::from_f64(1e-300).unwrap(),
        }),
        6 => Value::Bool(rng.chance(2)),
        // Deeper than serde_json's limit of 128 about half the time.
        _ => nested(64 + rng.below(128), Value::String(rng.pick(strings).clone())),
    }
}

/// Replaces a value, or adds or removes a field, somewhere in the document.
fn mutate_tree(rng: &mut Rng, doc: &mut Value, strings: &[String]) {
    let mut n = rng.below(count_nodes(doc));
    let Some(node) = nth_node(doc, &mut n) else { return };
    match node {
        Value::Object(map) if rng.chance(3) => {
            let key = rng.pick(KEYS).to_string();
            let value = replacement(rng, &Value::Null, strings);
            map.insert(key, value);
        }
        Value::Object(map) if rng.chance(3) && !map.is_empty() => {
            let key = map.keys().nth(rng.below(map.len())).unwrap().clone();
            map.remove(&key);
        }
        Value::Array(items) if rng.chance(3) => {
            let value = if items.is_empty() || rng.chance(2) {
                replacement(rng, &Value::Null, strings)
            } else {
                items[rng.below(items.len())].clone()
            };
            items.push(value);
        }
        _ => *node = replacement(rng, node, strings),
    }
}

/// Byte-level damage: flips, truncations, splices of raw tokens, deletions, duplications, and a
/// value after a `:` replaced wholesale.
fn mutate_bytes(rng: &mut Rng, bytes: &mut Vec<u8>) {
    let at = rng.below(bytes.len() + 1);
    let last = bytes.len().saturating_sub(1);
    match rng.below(8) {
        0 if !bytes.is_empty() => bytes[at.min(last)] ^= 1 << rng.below(8),
        1 if !bytes.is_empty() => bytes[at.min(last)] = rng.next() as u8,
        2 => bytes.truncate(at),
        3 | 4 => {
            let token = rng.pick(TOKENS);
            bytes.splice(at..at, token.iter().copied());
        }
        5 => {
            let end = (at + 1 + rng.below(32)).min(bytes.len());
            bytes.drain(at.min(end)..end);
        }
        6 => {
            let end = (at + 1 + rng.below(64)).min(bytes.len());
            let copy = bytes[at.min(end)..end].to_vec();
            let to = rng.below(bytes.len() + 1);
            bytes.splice(to..to, copy);
        }
        _ => {
            let colons: Vec<usize> = bytes.iter().enumerate().filter(|(_, b)| **b == b':').map(|(i, _)| i).collect();
            if colons.is_empty() {
                return;
            }
            let start = *rng.pick(&colons) + 1;
            let end = bytes[start..].iter().position(|b| b",}]\n".contains(b)).map_or(bytes.len(), |i| start + i);
            let token = rng.pick(TOKENS);
            bytes.splice(start..end, token.iter().copied());
        }
    }
}

/// One hostile payload derived from a fixture: structural mutations on the parsed document
/// (valid JSON that lies), byte mutations of the raw file (JSON that is not), or both.
fn mutant(rng: &mut Rng, raw: &[u8], doc: &Value, strings: &[String]) -> Vec<u8> {
    let (tree_edits, byte_edits) = match rng.below(3) {
        0 => (1 + rng.below(3), 0),
        1 => (0, 1 + rng.below(4)),
        _ => (1 + rng.below(2), 1 + rng.below(2)),
    };
    let mut bytes = if tree_edits == 0 {
        raw.to_vec()
    } else {
        let mut doc = doc.clone();
        for _ in 0..tree_edits {
            mutate_tree(rng, &mut doc, strings);
        }
        serde_json::to_vec(&doc).unwrap()
    };
    for _ in 0..byte_edits {
        mutate_bytes(rng, &mut bytes);
    }
    bytes
}

/// What every accepted payload must hold, whatever it said.
fn assert_valid(sender: Sender, input: &[u8], parsed: &Parsed) {
    let context = |what: &dyn std::fmt::Debug| format!("{}: {what:?} from {}", sender.as_str(), show(input));
    match parsed {
        Parsed::Requests(requests) => {
            assert!(!requests.is_empty(), "Requests(vec![]) instead of Ignored: {}", context(&requests));
            for request in requests {
                assert_eq!(request.sender, sender, "{}", context(&request));
                assert!(!request.repository.is_empty(), "empty repository: {}", context(&request));
                if let Some(tag) = &request.tag {
                    assert!(tag.parse::<Tag>().is_ok(), "invalid tag: {}", context(&request));
                }
                assert!(is_bare_repository(&request.repository), "not a bare repository: {}", context(&request));
            }
        }
        Parsed::Build(build) => assert!(!build.build_id.is_empty(), "{}", context(&build)),
        Parsed::Deployment(d) => {
            assert!(!d.environment.is_empty(), "{}", context(&d));
            let known = ferry_core::intake::azure_devops::DEPLOYMENT_STATUSES;
            assert!(known.contains(&d.status.as_str()), "undocumented status: {}", context(&d));
        }
        Parsed::Ignored(_) => {}
    }
}

/// A repository path and nothing else: no registry, no `:tag`, no `@digest`.
fn is_bare_repository(repository: &str) -> bool {
    match format!("registry.invalid/{repository}").parse::<RegistryRef>() {
        Ok(r) => r.repository == repository && r.image.tag.is_none() && r.image.digest.is_none(),
        Err(_) => false,
    }
}

fn parse_and_check(sender: Sender, input: &[u8]) -> Result<Parsed, intake::PayloadError> {
    let result = no_panic(sender.as_str(), input, || intake::parse(sender, input, Some("delivery-1")));
    if let Ok(parsed) = &result {
        assert_valid(sender, input, parsed);
    }
    result
}

/// The fixtures parse as they are; then thousands of mutants of them never panic and never yield
/// an invalid promotion.
fn survives_mutations(sender: Sender) {
    let strings = hostile_strings();
    let fixtures = fixtures(sender);
    let docs: Vec<Value> = fixtures
        .iter()
        .map(|(name, raw)| {
            assert!(parse_and_check(sender, raw).is_ok(), "fixture {name} no longer parses");
            serde_json::from_slice(raw).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
        })
        .collect();
    let mut rng = Rng::new(seed_for(sender.as_str()));
    let (mut accepted, mut refused) = (0, 0);
    for i in 0..MUTATIONS_PER_SENDER {
        let which = i % docs.len();
        let input = mutant(&mut rng, &fixtures[which].1, &docs[which], &strings);
        match parse_and_check(sender, &input) {
            Ok(_) => accepted += 1,
            Err(_) => refused += 1,
        }
    }
    // Both outcomes must be common, or the mutants are not probing the parser's decisions.
    assert!(accepted > MUTATIONS_PER_SENDER / 20, "{}: only {accepted} mutants accepted", sender.as_str());
    assert!(refused > MUTATIONS_PER_SENDER / 20, "{}: only {refused} mutants refused", sender.as_str());
}

#[test]
fn every_fixture_belongs_to_a_sender() {
    for entry in std::fs::read_dir(fixtures_dir()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            SENDERS.iter().any(|s| name.starts_with(s.as_str())),
            "fixture {name} is named after no sender, so no robustness test mutates it"
        );
    }
}

#[test]
fn acr_survives_hostile_payloads() {
    survives_mutations(Sender::Acr);
}

#[test]
fn azure_devops_survives_hostile_payloads() {
    survives_mutations(Sender::AzureDevops);
}

#[test]
fn dockerhub_survives_hostile_payloads() {
    survives_mutations(Sender::Dockerhub);
}

#[test]
fn github_survives_hostile_payloads() {
    survives_mutations(Sender::Github);
}

#[test]
fn distribution_survives_hostile_payloads() {
    survives_mutations(Sender::Distribution);
}

#[test]
fn harbor_survives_hostile_payloads() {
    survives_mutations(Sender::Harbor);
}

#[test]
fn quay_survives_hostile_payloads() {
    survives_mutations(Sender::Quay);
}

#[test]
fn generic_survives_hostile_payloads() {
    survives_mutations(Sender::Generic);
}

const DEPTH: usize = 10_000;

/// Bodies nested far deeper than any payload, never closed: no parser may accept them.
fn unterminated_deep_bodies() -> Vec<Vec<u8>> {
    let mut bodies = vec!["[".repeat(DEPTH).into_bytes(), r#"{"a":"#.repeat(DEPTH).into_bytes()];
    bodies.extend(KEYS.iter().map(|key| format!(r#"{{"{key}":{}"#, "[".repeat(DEPTH)).into_bytes()));
    bodies
}

/// Deep but well-formed: refused where a parser must descend, skipped without recursion where it
/// ignores the field; either way without a panic or a stack overflow.
fn balanced_deep_bodies() -> Vec<Vec<u8>> {
    let balanced = format!("{}{}", "[".repeat(DEPTH), "]".repeat(DEPTH));
    let mut bodies = vec![balanced.clone().into_bytes()];
    bodies.extend(KEYS.iter().map(|key| format!(r#"{{"{key}":{balanced}}}"#).into_bytes()));
    bodies.push(format!(r#"{{"action":"push","target":{{"repository":"a","tag":{balanced}}}}}"#).into_bytes());
    bodies
}

#[test]
fn deeply_nested_payloads_are_refused_without_overflowing_the_stack() {
    for sender in SENDERS {
        for body in unterminated_deep_bodies() {
            assert!(parse_and_check(sender, &body).is_err(), "{} accepted {}", sender.as_str(), show(&body));
        }
        for body in balanced_deep_bodies() {
            let _ = parse_and_check(sender, &body);
        }
        assert!(parse_and_check(sender, &balanced_deep_bodies()[0]).is_err(), "{}", sender.as_str());
    }
}

#[test]
fn deeply_nested_config_and_manifests_are_refused_without_overflowing_the_stack() {
    for text in [
        format!("a = {}", "[".repeat(DEPTH)),
        format!("a = {}1{}", "[".repeat(DEPTH), "]".repeat(DEPTH)),
        format!("a = {}", "{ b = ".repeat(DEPTH)),
        format!("{}b = 1", "a.".repeat(DEPTH)),
        format!("[{}b]", "a.".repeat(DEPTH)),
    ] {
        let result = no_panic("Config::parse", text.as_bytes(), || Config::parse(&text, "deep.toml").map(|_| ()));
        assert!(result.is_err(), "accepted {}", show(text.as_bytes()));
    }
    let parse = |body: &[u8]| {
        let bytes = bytes::Bytes::copy_from_slice(body);
        no_panic("Manifest::parse", body, || Manifest::parse(bytes, None, Digest::sha256_of(body)).map(|_| ()))
    };
    for body in unterminated_deep_bodies() {
        assert!(parse(&body).is_err(), "accepted {}", show(&body));
    }
    for body in balanced_deep_bodies() {
        let _ = parse(&body);
    }
}

/// Byte mutants of a few valid strings, for the small text parsers.
fn text_mutants(seeds: &[String], count: usize, seed: u64) -> impl Iterator<Item = String> {
    let mut rng = Rng::new(seed);
    let seeds = seeds.to_vec();
    (0..count).map(move |i| {
        let mut bytes = seeds[i % seeds.len()].clone().into_bytes();
        for _ in 0..1 + rng.below(3) {
            mutate_bytes(&mut rng, &mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

#[test]
fn image_locations_survive_hostile_text_and_print_back_as_themselves() {
    let seeds: Vec<String> = [
        "127.0.0.1:5000/shop/api:v1".to_string(),
        format!("ghcr.io/o/p:v2@sha256:{HEX}"),
        "docker://localhost:5000/a:b".to_string(),
        "alpine".to_string(),
        "bitnami/redis:7".to_string(),
        "oci:/tmp/lay:v1".to_string(),
        "oci:./lay".to_string(),
        "docker-archive:img.tar".to_string(),
    ]
    .into();
    for text in text_mutants(&seeds, 5_000, seed_for("location")) {
        let Ok(location) = no_panic("Location::from_str", text.as_bytes(), || text.parse::<Location>()) else {
            continue;
        };
        let printed = location.to_string();
        assert_eq!(printed.parse::<Location>().as_ref(), Ok(&location), "`{text}` printed as `{printed}`");
    }
}

/// Found by `fuzz/` (`location`): the host `oci:5000` can only be written with `docker://`, and
/// `Display` used to leave it out, so the printed location read back as an OCI layout directory.
#[test]
fn a_registry_host_named_like_a_transport_prints_back_as_itself() {
    for text in ["docker://oci:5000/shop/api", "docker://docker-archive:5000/shop/api"] {
        let location: Location = text.parse().unwrap();
        assert_eq!(location.to_string().parse::<Location>(), Ok(location), "{text}");
    }
}

/// Found by `fuzz/` (`intake_acr`): `repository_field` checked only that
/// `registry.invalid/{repository}` parses, which it also does with a `:tag` or `@digest` on the
/// end, and kept the whole string as the repository. Generic parses the full name and was not
/// affected; Azure DevOps names no repository.
#[test]
fn a_repository_carrying_a_tag_or_digest_is_refused() {
    let digest = format!("sha256:{HEX}");
    let manifest = manifest::OCI_MANIFEST;
    for repository in ["shop/api:v1".to_string(), format!("shop/api@{digest}")] {
        for (sender, body) in [
            (Sender::Acr, format!(r#"{{"action":"push","target":{{"repository":"{repository}","tag":"v2"}}}}"#)),
            (
                Sender::Dockerhub,
                format!(r#"{{"push_data":{{"tag":"v2"}},"repository":{{"repo_name":"{repository}"}}}}"#),
            ),
            (
                Sender::Github,
                format!(
                    r#"{{"action":"published","package":{{"namespace":"{}","name":"{}","package_type":"container","package_version":{{"container_metadata":{{"tag":{{"name":"v2"}}}}}}}}}}"#,
                    repository.split_once('/').unwrap().0,
                    repository.split_once('/').unwrap().1
                ),
            ),
            (
                Sender::Distribution,
                format!(
                    r#"{{"events":[{{"action":"push","target":{{"mediaType":"{manifest}","repository":"{repository}","tag":"v2"}}}}]}}"#
                ),
            ),
            (
                Sender::Harbor,
                format!(
                    r#"{{"type":"PUSH_ARTIFACT","event_data":{{"repository":{{"repo_full_name":"{repository}"}},"resources":[{{"tag":"v2"}}]}}}}"#
                ),
            ),
            (Sender::Quay, format!(r#"{{"repository":"{repository}","updated_tags":["v2"]}}"#)),
        ] {
            let result = intake::parse(sender, body.as_bytes(), None);
            assert!(result.is_err(), "{} accepted repository `{repository}`: {result:?}", sender.as_str());
        }
    }
}

/// Found while writing the `config` fuzz target: `soak_minutes` is any `u64` the file holds, and
/// `Stage::soak` computed `soak_minutes * 60 + soak_secs` unchecked (a panic in debug builds, a
/// far shorter soak in release).
#[test]
fn a_config_that_loads_has_a_soak_duration_or_is_refused() {
    let text = r#"
[registries."r.io"]
[[pipelines]]
name = "p"
source = "r.io/a"
  [[pipelines.stages]]
  name = "s"
  target = "r.io/b"
  gate = "soak"
  soak_minutes = 307445734561825861
"#;
    if let Ok(config) = Config::parse(text, "soak.toml") {
        let stage = &config.pipelines[0].stages[0];
        assert!(no_panic("Stage::soak", text.as_bytes(), || stage.soak()).as_secs() >= stage.soak_minutes);
    }
}

#[test]
fn registry_challenges_survive_hostile_text() {
    let seeds: Vec<String> = [
        r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        r#"Bearer realm="https://r.example/token", scope="repository:a/b:pull,push", error="insufficient_scope""#,
        r#"bearer realm=https://r.example/token,service=r.example"#,
        r#"Bearer realm="a\"b\\c""#,
        r#"Basic realm="Registry Realm""#,
    ]
    .map(String::from)
    .into();
    for text in text_mutants(&seeds, 5_000, seed_for("challenge")) {
        no_panic("Challenge::parse", text.as_bytes(), || Challenge::parse(&text));
    }
}

#[test]
fn manifests_survive_hostile_bytes() {
    let descriptor = format!(r#"{{"mediaType":"application/octet-stream","digest":"sha256:{HEX}","size":7}}"#);
    let raws = [
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{descriptor},"layers":[{descriptor}]}}"#,
            manifest::OCI_MANIFEST
        ),
        format!(r#"{{"schemaVersion":2,"manifests":[{descriptor}],"subject":{descriptor}}}"#),
        format!(r#"{{"schemaVersion":2,"mediaType":"{}","blobs":[{descriptor}]}}"#, manifest::OCI_ARTIFACT),
    ];
    let docs: Vec<Value> = raws.iter().map(|text| serde_json::from_str(text).unwrap()).collect();
    let content_types = [None, Some(manifest::DOCKER_LIST), Some("application/json; charset=utf-8"), Some("text/html")];
    let strings = hostile_strings();
    let mut rng = Rng::new(seed_for("manifest"));
    for i in 0..3_000 {
        let body = mutant(&mut rng, raws[i % raws.len()].as_bytes(), &docs[i % docs.len()], &strings);
        let content_type = *rng.pick(&content_types);
        let digest = Digest::sha256_of(&body);
        let bytes = bytes::Bytes::from(body.clone());
        if let Ok(m) = no_panic("Manifest::parse", &body, || Manifest::parse(bytes, content_type, digest)) {
            let known = [
                manifest::OCI_INDEX,
                manifest::OCI_MANIFEST,
                manifest::DOCKER_LIST,
                manifest::DOCKER_MANIFEST,
                manifest::OCI_ARTIFACT,
            ];
            assert!(known.contains(&m.media_type.as_str()), "media type `{}` from {}", m.media_type, show(&body));
        }
    }
}

#[test]
fn config_files_survive_hostile_text() {
    let seeds: Vec<String> = vec![
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart/ferry.toml"))
            .unwrap(),
        r#"
[server]
operator_token_env = "FERRY_OPERATOR_TOKEN"
[worker]
concurrency = 4
retry_base_ms = 500
[registries."127.0.0.1:5001"]
[sources.azure-devops]
secret_file = "/run/secrets/ado"
username = "ferry"
[[pipelines]]
name = "ado"
source = "127.0.0.1:5001/shop/web"
tags = ["v*", "*-rc*"]
  [pipelines.azure_devops]
  build_definition = "shop-api-ci"
  tag = "build-{build.id}"
  [[pipelines.stages]]
  name = "staging"
  target = "127.0.0.1:5001/shop/web-staging"
  azure_devops_environment = "Staging"
  notify = { kind = "webhook", url = "https://deploy.example.com/hook", secret_env = "NOTIFY" }
  [[pipelines.stages]]
  name = "soak"
  target = "127.0.0.1:5001/shop/web-soak"
  gate = "soak"
  soak_minutes = 90
  [[pipelines.stages]]
  name = "prod"
  target = "127.0.0.1:5001/shop/web-prod"
  gate = "approval"
  approvers = 2
  approval_expires_hours = 48
  semver = true
  target_tags = ["{tag}", "{stage}-{build.number}"]
"#
        .to_string(),
    ];
    for seed in &seeds {
        assert!(Config::parse(seed, "seed.toml").is_ok(), "seed no longer parses:\n{seed}");
    }
    for text in text_mutants(&seeds, 1_500, seed_for("config")) {
        // Rendering an error walks the text to its line and column; a file that loads must answer
        // what the worker asks of it.
        no_panic("Config::parse", text.as_bytes(), || match Config::parse(&text, "fuzz.toml") {
            Err(e) => drop(e.to_string()),
            Ok(config) => {
                for pipeline in &config.pipelines {
                    for (i, stage) in pipeline.stages.iter().enumerate() {
                        let _ = (pipeline.stage_source(i), stage.target_repo(), stage.soak());
                    }
                }
            }
        });
    }
}

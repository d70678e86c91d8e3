//! Registry credentials and the `WWW-Authenticate` challenge grammar.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use url::Url;

use super::error::CopyError;

/// A secret string whose `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// How Ferry proves who it is to one registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// Username and password (or token used as a password: ACR admin user, GHCR PAT, …).
    Basic { username: String, password: Secret },
    /// An OAuth2 refresh token (docker config's `identitytoken`, ACR refresh tokens):
    /// exchanged at the token realm with `grant_type=refresh_token`.
    IdentityToken(Secret),
}

impl Credential {
    /// Parses `USER:PASSWORD` as given on the command line or in `FERRY_*_CREDS`.
    pub fn from_user_pass(value: &str) -> Result<Self, CopyError> {
        match value.split_once(':') {
            Some((user, pass)) if !user.is_empty() => {
                Ok(Credential::Basic { username: user.to_string(), password: Secret::new(pass) })
            }
            _ => Err(CopyError::Invalid(
                "credentials must be given as USER:PASSWORD (the password may contain `:`)".into(),
            )),
        }
    }

    pub fn basic_header(&self) -> Option<String> {
        match self {
            Credential::Basic { username, password } => {
                Some(format!("Basic {}", BASE64.encode(format!("{username}:{}", password.expose()))))
            }
            Credential::IdentityToken(_) => None,
        }
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer { realm: String, service: Option<String>, scope: Option<String> },
}

impl Challenge {
    /// Parses `Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`.
    pub fn parse(header: &str) -> Option<Self> {
        let header = header.trim();
        let (scheme, params) = header.split_once(' ').unwrap_or((header, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let params = parse_params(params);
        Some(Challenge::Bearer {
            realm: params.get("realm")?.clone(),
            service: params.get("service").cloned(),
            scope: params.get("scope").cloned(),
        })
    }
}

/// Token services that belong to a registry although they live on another host: Docker Hub
/// sends clients to `auth.docker.io`. Any other foreign realm must be configured.
const BUILT_IN_REALMS: &[(&[&str], &str)] =
    &[(&["docker.io", "registry-1.docker.io", "index.docker.io"], "https://auth.docker.io")];

/// Why a `WWW-Authenticate: Bearer realm=…` was not followed. Ferry sends the registry's
/// credentials to the realm, so a realm the registry may name freely would let any registry
/// collect them (or have them sent in cleartext).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RealmRefusal {
    #[error(
        "refused the token realm `{realm}`: it is plain http while the registry speaks https, and Ferry does not send credentials in cleartext; if the registry has an https token service, set token_realm = \"https://…\" under [registries.\"{registry}\"]"
    )]
    Downgrade { realm: String, registry: String },
    #[error(
        "refused the token realm `{realm}`: it is on another host than the registry and not https; Ferry sends credentials only to the registry's own origin or to an https token service configured for it (token_realm = \"https://…\" under [registries.\"{registry}\"])"
    )]
    ForeignPlain { realm: String, registry: String },
    #[error(
        "refused the token realm `{realm}`: it is on another host than the registry; if that is really this registry's token service, set token_realm = \"{realm}\" under [registries.\"{registry}\"] (`ferry copy`: --token-realm {registry}={realm}; Ferry sends credentials only to the registry's own origin and to a token service configured for it)"
    )]
    Unknown { realm: String, registry: String },
}

/// Decides whether Ferry may fetch tokens (with the registry's credentials) at `realm` for the
/// registry reached at `registry` (`https://host[:port]/`), called `name` in the config.
/// Allowed: the registry's own origin (scheme, host and port), or an https realm that is built
/// in for that registry (Docker Hub) or configured as its `token_realm` (same origin and path).
pub fn check_token_realm(
    registry: &Url,
    name: &str,
    realm: &Url,
    configured: Option<&Url>,
) -> Result<(), RealmRefusal> {
    let refusal_fields = || (realm.as_str().to_string(), name.to_string());
    if registry.scheme() == "https" && realm.scheme() != "https" {
        let (realm, registry) = refusal_fields();
        return Err(RealmRefusal::Downgrade { realm, registry });
    }
    if realm.origin() == registry.origin() {
        return Ok(());
    }
    if realm.scheme() != "https" {
        let (realm, registry) = refusal_fields();
        return Err(RealmRefusal::ForeignPlain { realm, registry });
    }
    let host = registry.host_str().unwrap_or_default();
    let built_in = BUILT_IN_REALMS.iter().any(|(hosts, origin)| {
        hosts.contains(&host) && Url::parse(origin).is_ok_and(|known| known.origin() == realm.origin())
    });
    let configured = configured.is_some_and(|known| known.origin() == realm.origin() && known.path() == realm.path());
    if built_in || configured {
        return Ok(());
    }
    let (realm, registry) = refusal_fields();
    Err(RealmRefusal::Unknown { realm, registry })
}

/// `key="value", key2=value2`: quoted values may hold commas (scopes do: `pull,push`).
fn parse_params(input: &str) -> HashMap<String, String> {
    let mut params = HashMap::new();
    let mut rest = input.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let (value, remainder) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end.min(quoted.len())..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        params.insert(key, value);
        rest = remainder.trim_start_matches([',', ' ']);
    }
    params
}

#[derive(Debug, Default, Deserialize)]
struct DockerConfigFile {
    #[serde(default)]
    auths: HashMap<String, DockerConfigAuth>,
}

#[derive(Debug, Default, Deserialize)]
struct DockerConfigAuth {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
}

/// Credentials from a docker `config.json` (`auths` only; credential helpers are not run).
#[derive(Debug, Default)]
pub struct DockerConfig {
    by_host: HashMap<String, Credential>,
}

impl DockerConfig {
    /// The file Ferry reads when none is given: `$REGISTRY_AUTH_FILE`, then
    /// `$DOCKER_CONFIG/config.json`, then `~/.docker/config.json`.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(path) = std::env::var_os("REGISTRY_AUTH_FILE") {
            return Some(path.into());
        }
        if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
            return Some(Path::new(&dir).join("config.json"));
        }
        std::env::var_os("HOME").map(|home| Path::new(&home).join(".docker/config.json"))
    }

    /// Loads `path`; a missing default file is simply empty, a broken one is an error.
    pub fn load(path: &Path) -> Result<Self, CopyError> {
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(CopyError::io(path, e)),
        };
        let file: DockerConfigFile = serde_json::from_slice(&text)
            .map_err(|e| CopyError::Invalid(format!("{}: not a docker config.json: {e}", path.display())))?;
        let mut by_host = HashMap::new();
        for (key, entry) in file.auths {
            let host = normalize_config_host(&key);
            let credential = if let Some(token) = entry.identitytoken.filter(|t| !t.is_empty()) {
                Credential::IdentityToken(Secret::new(token))
            } else if let (Some(username), Some(password)) = (entry.username, entry.password) {
                Credential::Basic { username, password: Secret::new(password) }
            } else if let Some(auth) = entry.auth.filter(|a| !a.is_empty()) {
                let decoded = BASE64.decode(auth.trim()).ok().and_then(|b| String::from_utf8(b).ok());
                let Some(pair) = decoded else {
                    return Err(CopyError::Invalid(format!(
                        "{}: the `auth` of `{key}` is not base64 of USER:PASSWORD",
                        path.display()
                    )));
                };
                Credential::from_user_pass(&pair)?
            } else {
                continue;
            };
            by_host.insert(host, credential);
        }
        Ok(DockerConfig { by_host })
    }

    /// The credential for a registry as written in a reference (`docker.io` for Docker Hub).
    pub fn credential_for(&self, registry: &str) -> Option<&Credential> {
        self.by_host.get(registry)
    }
}

/// Config keys come as `host`, `https://host/v1/` or Docker Hub's legacy index URL.
fn normalize_config_host(key: &str) -> String {
    let host = key.trim_start_matches("https://").trim_start_matches("http://");
    let host = host.split('/').next().unwrap_or(host);
    match host {
        "index.docker.io" | "registry-1.docker.io" => super::reference::DOCKER_HUB.to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenge_keeps_commas_inside_quotes() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:shop/api:pull,push""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.example.com/token".into(),
                service: Some("registry.example.com".into()),
                scope: Some("repository:shop/api:pull,push".into()),
            })
        );
    }

    #[test]
    fn basic_and_unknown_challenges() {
        assert_eq!(Challenge::parse(r#"Basic realm="Registry Realm""#), Some(Challenge::Basic));
        assert_eq!(Challenge::parse("Negotiate abc"), None);
        assert_eq!(Challenge::parse(r#"Bearer service="x""#), None, "a bearer challenge needs a realm");
    }

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    #[test]
    fn token_realms_are_trusted_only_on_the_registry_origin_or_when_known() {
        let https = url("https://registry.example.com/");
        let plain = url("http://127.0.0.1:5000/");
        let name = "registry.example.com";
        // The registry's own origin: fine, whatever the path.
        assert_eq!(check_token_realm(&https, name, &url("https://registry.example.com/token"), None), Ok(()));
        assert_eq!(check_token_realm(&plain, "127.0.0.1:5000", &url("http://127.0.0.1:5000/token"), None), Ok(()));
        // Another port is another origin.
        assert!(matches!(
            check_token_realm(&plain, "127.0.0.1:5000", &url("http://127.0.0.1:5001/token"), None),
            Err(RealmRefusal::ForeignPlain { .. })
        ));
        // https registry, http realm: a downgrade, even on the same host, even if configured.
        let downgrade = url("http://registry.example.com/token");
        assert!(matches!(check_token_realm(&https, name, &downgrade, None), Err(RealmRefusal::Downgrade { .. })));
        assert!(matches!(
            check_token_realm(&https, name, &downgrade, Some(&downgrade)),
            Err(RealmRefusal::Downgrade { .. })
        ));
        // A foreign https realm: refused unless configured (origin and path must match).
        let foreign = url("https://auth.example.com/token");
        let err = check_token_realm(&https, name, &foreign, None).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("https://auth.example.com/token") && text.contains("token_realm"), "{text}");
        assert!(text.contains(r#"[registries."registry.example.com"]"#), "{text}");
        assert_eq!(check_token_realm(&https, name, &foreign, Some(&url("https://auth.example.com/token"))), Ok(()));
        assert!(check_token_realm(&https, name, &foreign, Some(&url("https://auth.example.com/other"))).is_err());
        assert!(check_token_realm(&https, name, &foreign, Some(&url("https://auth.example.com:8443/token"))).is_err());
        // Docker Hub's token service is built in, for Docker Hub only.
        let hub = url("https://registry-1.docker.io/");
        assert_eq!(check_token_realm(&hub, "docker.io", &url("https://auth.docker.io/token"), None), Ok(()));
        assert!(check_token_realm(&https, name, &url("https://auth.docker.io/token"), None).is_err());
        assert!(check_token_realm(&hub, "docker.io", &url("http://auth.docker.io/token"), None).is_err());
    }

    #[test]
    fn secrets_never_print() {
        let c = Credential::from_user_pass("ci:hunter2:with-colon").unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        let Credential::Basic { password, .. } = &c else { panic!() };
        assert_eq!(password.expose(), "hunter2:with-colon");
        assert!(Credential::from_user_pass("no-colon").is_err());
    }

    #[test]
    fn docker_config_reads_auth_userpass_and_identity_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            format!(
                r#"{{"auths":{{
                    "https://index.docker.io/v1/":{{"auth":"{}"}},
                    "127.0.0.1:5000":{{"username":"u","password":"p"}},
                    "contoso.azurecr.io":{{"auth":"","identitytoken":"refresh"}}
                }},"credsStore":"desktop"}}"#,
                BASE64.encode("hub:pw")
            ),
        )
        .unwrap();
        let config = DockerConfig::load(&path).unwrap();
        assert_eq!(
            config.credential_for("docker.io"),
            Some(&Credential::Basic { username: "hub".into(), password: Secret::new("pw") })
        );
        assert!(matches!(config.credential_for("127.0.0.1:5000"), Some(Credential::Basic { .. })));
        assert!(matches!(config.credential_for("contoso.azurecr.io"), Some(Credential::IdentityToken(_))));
        assert!(DockerConfig::load(&dir.path().join("missing.json")).unwrap().credential_for("x").is_none());
        std::fs::write(&path, "{not json").unwrap();
        assert!(DockerConfig::load(&path).is_err());
    }
}

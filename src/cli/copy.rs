//! `ferry copy SRC DST`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use ferry_core::registry::auth::{Credential, DockerConfig};
use ferry_core::registry::client::{ClientOptions, RetryPolicy};
use ferry_core::registry::reference::{DOCKER_HUB, DOCKER_HUB_API};
use ferry_core::registry::{Access, CopyOptions, CopyReport, Location, Progress, copy};

/// Copy an image digest-exact from SRC to DST
///
/// Every platform of an index, its signatures, SBOMs and attestations (referrers), manifest
/// bytes unmodified; the target's digest is read back and must equal the source's.
///
/// Locations:
///   HOST[:PORT]/REPO[:TAG][@sha256:HEX]   an image in a registry (`docker.io` if no host)
///   oci:DIR[:TAG]                          an OCI image layout directory (source or target)
///   docker-archive:FILE.tar                what `docker save` writes (source only)
///
/// A target without a tag gets the source's tag; with neither, it is pushed by digest.
///
/// Examples:
///   ferry copy build.example.com/shop/api:1.4.2 prod.example.com/shop/api
///   ferry copy --plain-http 127.0.0.1:5001 --plain-http 127.0.0.1:5002 \
///       127.0.0.1:5001/shop/api:dev 127.0.0.1:5002/shop/api:dev
///   ferry copy docker-archive:api.tar registry.example.com/shop/api:build-1234
///   ferry copy --json ghcr.io/acme/api@sha256:0f1e… oci:./api-layout:1.4.2
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct CopyArgs {
    /// Where the image comes from.
    #[arg(value_name = "SRC")]
    source: String,

    /// Where the image goes.
    #[arg(value_name = "DST")]
    target: String,

    /// Print one JSON object with digest, media_type, bytes_transferred (blob bytes),
    /// manifest_bytes, blobs_copied, blobs_mounted, blobs_skipped, referrers_copied and seconds.
    #[arg(long)]
    json: bool,

    /// Speak plain HTTP (no TLS) to this registry, e.g. 127.0.0.1:5000. Repeatable. Never the default.
    #[arg(long, value_name = "HOST[:PORT]")]
    plain_http: Vec<String>,

    /// Credentials for the source registry.
    #[arg(long, value_name = "USER:PASSWORD", env = "FERRY_SRC_CREDS", hide_env_values = true)]
    src_creds: Option<String>,

    /// Credentials for the target registry.
    #[arg(long, value_name = "USER:PASSWORD", env = "FERRY_DEST_CREDS", hide_env_values = true)]
    dest_creds: Option<String>,

    /// Docker config.json to read registry credentials from [default: $REGISTRY_AUTH_FILE,
    /// $DOCKER_CONFIG/config.json, ~/.docker/config.json].
    #[arg(long, value_name = "PATH")]
    authfile: Option<PathBuf>,

    /// Trust this PEM CA certificate (bundle), besides the system's, for every registry this copy
    /// talks to (source and target). Repeatable. (`ferry serve` trusts a `ca_cert` for its own
    /// registry only.)
    #[arg(long, value_name = "PATH")]
    ca_cert: Vec<PathBuf>,

    /// Accept this https token service for a registry whose bearer challenge sends Ferry to
    /// another host (Docker Hub's is built in), e.g.
    /// `registry.gitlab.com=https://gitlab.com/jwt/auth`. Any other foreign realm is refused,
    /// since the realm receives the registry's credentials. Repeatable.
    #[arg(long, value_name = "REGISTRY=URL", value_parser = parse_token_realm)]
    token_realm: Vec<(String, reqwest::Url)>,

    /// Do not copy referrers (signatures, SBOMs, attestations).
    #[arg(long)]
    no_referrers: bool,

    /// Copy only this platform's manifest out of an index (e.g. linux/amd64). The result is that
    /// manifest, not the index, and its digest differs from the index's.
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    platform: Option<String>,

    /// Blobs transferred at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    jobs: u16,

    /// Retries of a failed request or blob (5xx, 429, dropped connections), with backoff.
    #[arg(long, default_value_t = 4)]
    retries: u32,
}

pub async fn run(args: CopyArgs) -> anyhow::Result<()> {
    let source: Location = args.source.parse().context("SRC")?;
    let target: Location = args.target.parse().context("DST")?;

    let mut ca_certs_pem = Vec::new();
    for path in &args.ca_cert {
        ca_certs_pem.push(std::fs::read(path).with_context(|| format!("reading CA certificate {}", path.display()))?);
    }
    let docker_config = match args.authfile.clone().or_else(DockerConfig::default_path) {
        Some(path) if args.authfile.is_some() && !path.exists() => {
            anyhow::bail!("--authfile {}: no such file", path.display())
        }
        Some(path) => DockerConfig::load(&path)?,
        None => DockerConfig::default(),
    };
    let access = Access {
        client: ClientOptions {
            plain_http: args.plain_http.clone(),
            ca_certs_pem,
            retry: RetryPolicy { retries: args.retries, ..RetryPolicy::default() },
            token_realms: args.token_realm.iter().cloned().collect(),
            ..ClientOptions::default()
        },
        source_credential: args
            .src_creds
            .as_deref()
            .map(Credential::from_user_pass)
            .transpose()
            .context("--src-creds")?,
        target_credential: args
            .dest_creds
            .as_deref()
            .map(Credential::from_user_pass)
            .transpose()
            .context("--dest-creds")?,
        docker_config,
    };
    let options = CopyOptions {
        jobs: args.jobs.into(),
        referrers: !args.no_referrers,
        platform: args.platform.clone(),
        extra_tags: Vec::new(),
    };

    let progress = Arc::new(Progress::default());
    let ticker = std::io::stderr().is_terminal().then(|| tokio::spawn(show_progress(progress.clone())));
    let result = copy(&source, &target, &access, &options, progress).await;
    if let Some(ticker) = ticker {
        ticker.abort();
        eprint!("\r\x1b[2K");
    }
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", summary(&report));
    }
    Ok(())
}

/// `REGISTRY=URL` of `--token-realm`, keyed by the host the registry API is served from.
fn parse_token_realm(value: &str) -> Result<(String, reqwest::Url), String> {
    let (registry, realm) = value.split_once('=').ok_or_else(|| format!("`{value}`: expected REGISTRY=URL"))?;
    let realm = reqwest::Url::parse(realm).map_err(|e| format!("`{realm}` is not a URL: {e}"))?;
    if realm.scheme() != "https" {
        return Err(format!("`{realm}` is not https: the token service receives the registry's credentials"));
    }
    let host = if registry == DOCKER_HUB { DOCKER_HUB_API } else { registry };
    Ok((host.to_string(), realm))
}

fn summary(r: &CopyReport) -> String {
    format!(
        "copied {} → {} {} ({} blobs copied, {} mounted, {} already there; {} transferred; {} referrers) in {:.2}s",
        r.source,
        r.target,
        r.digest,
        r.blobs_copied,
        r.blobs_mounted,
        r.blobs_skipped,
        human_bytes(r.bytes_transferred),
        r.referrers_copied,
        r.seconds
    )
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// A one-line progress display on a terminal, redrawn a few times a second.
async fn show_progress(progress: Arc<Progress>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let done = progress.blobs_done.load(Ordering::Relaxed);
        let total = progress.blobs_total.load(Ordering::Relaxed);
        let moved = progress.bytes_moved.load(Ordering::Relaxed);
        let bytes_total = progress.bytes_total.load(Ordering::Relaxed);
        eprint!("\r\x1b[2Kblobs {done}/{total}  {} of {}", human_bytes(moved), human_bytes(bytes_total));
    }
}

impl CopyArgs {
    /// `--json`: the result, and an error, as one JSON document on stdout.
    pub fn json(&self) -> bool {
        self.json
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_realms_are_https_and_keyed_by_api_host() {
        let (host, realm) = parse_token_realm("registry.gitlab.com=https://gitlab.com/jwt/auth").unwrap();
        assert_eq!((host.as_str(), realm.as_str()), ("registry.gitlab.com", "https://gitlab.com/jwt/auth"));
        assert_eq!(parse_token_realm("docker.io=https://auth.example.com/t").unwrap().0, DOCKER_HUB_API);
        assert!(parse_token_realm("r.io=http://auth.example.com/t").unwrap_err().contains("not https"));
        assert!(parse_token_realm("https://auth.example.com/t").is_err());
    }

    #[test]
    fn bytes_read_as_people_write_them() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(1 << 30), "1.0 GiB");
    }
}

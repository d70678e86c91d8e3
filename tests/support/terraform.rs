//! terraform, offline: a copy of the repository's `infra/` in a temp dir (so `.terraform/`
//! and state never land in the tree) and a CLI config that installs hashicorp/aws from the
//! filesystem mirror found on this machine at run time.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::tools;

/// Environment variable naming the mirror directory when the search below cannot find it.
pub const MIRROR_ENV: &str = "FERRY_TF_PROVIDER_MIRROR";

/// Where terraform mirrors usually live; searched before the whole filesystem.
const LIKELY_MIRRORS: &[&str] =
    &["/opt", "/usr/share/terraform", "/usr/local/share/terraform", "/root/.terraform.d", "/var/lib/terraform"];

/// Directories a filesystem-wide search skips: kernel views, and trees that are big and never
/// hold a mirror (build output, git objects, package caches).
const NEVER_MIRRORS: &[&str] = &["proc", "sys", "dev", "run", "target", ".git", "node_modules", ".cargo", ".rustup"];

pub struct TerraformRun {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl TerraformRun {
    pub fn output(&self) -> String {
        format!("--- stdout\n{}\n--- stderr\n{}", self.stdout, self.stderr)
    }
}

/// A private copy of `infra/` with its own CLI config; everything terraform writes stays in it.
pub struct TerraformWorkspace {
    terraform: PathBuf,
    dir: TempDir,
    envs: Vec<(String, String)>,
}

impl TerraformWorkspace {
    /// Copies `<repo>/infra` into a temp dir and points terraform at the provider mirror.
    pub fn copy_of_infra() -> Self {
        let terraform = tools::terraform();
        let mirror = provider_mirror();
        let dir = tempfile::tempdir().expect("temp dir for terraform");
        copy_tree(&Path::new(env!("CARGO_MANIFEST_DIR")).join("infra"), &dir.path().join("infra"));
        let cli_config = dir.path().join("terraformrc");
        // serde_json quoting is valid HCL string quoting for a path.
        let mirror = serde_json::to_string(&mirror.display().to_string()).expect("quote path");
        fs::write(
            &cli_config,
            format!(
                "provider_installation {{\n  filesystem_mirror {{\n    path    = {mirror}\n    \
                 include = [\"registry.terraform.io/hashicorp/aws\"]\n  }}\n}}\n"
            ),
        )
        .expect("write terraform CLI config");
        let envs = vec![
            ("TF_CLI_CONFIG_FILE".into(), cli_config.display().to_string()),
            ("TF_IN_AUTOMATION".into(), "1".into()),
            ("TF_INPUT".into(), "0".into()),
            // No version check against checkpoint-api: the tests stay on this machine.
            ("CHECKPOINT_DISABLE".into(), "1".into()),
        ];
        Self { terraform, dir, envs }
    }

    /// `<copy>/infra/<relative>`.
    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join("infra").join(relative)
    }

    /// Runs terraform in `<copy>/infra/<relative>` with `envs` added. AWS settings of the
    /// person running the tests are removed, so nothing can reach a real account.
    pub fn run(&self, relative: &str, args: &[&str], envs: &[(&str, &str)]) -> TerraformRun {
        let out_path = self.dir.path().join("terraform.stdout");
        let err_path = self.dir.path().join("terraform.stderr");
        let mut command = Command::new(&self.terraform);
        command
            .args(args)
            .current_dir(self.path(relative))
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out_path).expect("terraform stdout file"))
            .stderr(fs::File::create(&err_path).expect("terraform stderr file"));
        for (key, _) in std::env::vars() {
            if key.starts_with("AWS_") || key.starts_with("TF_") {
                command.env_remove(&key);
            }
        }
        command.envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        command.envs(envs.iter().copied());
        let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot run terraform: {e}"));
        // terraform apply against moto takes about a minute (the provider waits for SQS
        // attributes to settle); 15 minutes means it hangs.
        let deadline = Instant::now() + Duration::from_secs(900);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for terraform") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "terraform {args:?} in infra/{relative} still running after 15 minutes; its output:\n{}\n{}",
                    fs::read_to_string(&out_path).unwrap_or_default(),
                    fs::read_to_string(&err_path).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        TerraformRun {
            status,
            stdout: fs::read_to_string(&out_path).unwrap_or_default(),
            stderr: fs::read_to_string(&err_path).unwrap_or_default(),
        }
    }

    /// Like [`run`](Self::run), panicking with terraform's output unless it succeeded.
    pub fn ok(&self, relative: &str, args: &[&str], envs: &[(&str, &str)]) -> String {
        let run = self.run(relative, args, envs);
        assert!(
            run.status.success(),
            "terraform {args:?} in infra/{relative} failed ({}):\n{}",
            run.status,
            run.output()
        );
        run.stdout
    }
}

/// The filesystem mirror holding hashicorp/aws (the directory that contains
/// `registry.terraform.io/`): `$FERRY_TF_PROVIDER_MIRROR`, else the first
/// `terraform-provider-aws*` found under the usual places, else anywhere on the filesystem.
pub fn provider_mirror() -> PathBuf {
    if let Some(dir) = std::env::var_os(MIRROR_ENV) {
        return PathBuf::from(dir);
    }
    let home_mirror = std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".terraform.d"));
    LIKELY_MIRRORS
        .iter()
        .map(PathBuf::from)
        .chain(home_mirror)
        .chain([PathBuf::from("/")])
        .find_map(|root| find_aws_provider(&root, 0))
        .unwrap_or_else(|| {
            panic!(
                "\n\nNo filesystem mirror of the hashicorp/aws terraform provider on this machine \
                 (searched for terraform-provider-aws* under registry.terraform.io/hashicorp/aws/).\n\
                 The terraform tests run offline; provide one with\n\n    \
                 terraform providers mirror DIR   (in infra/examples/basic, on a machine with network)\n\n\
                 and set {MIRROR_ENV}=DIR\n"
            )
        })
}

/// Depth-first search for `…/registry.terraform.io/hashicorp/aws/…/terraform-provider-aws*`;
/// returns the directory holding `registry.terraform.io`.
fn find_aws_provider(dir: &Path, depth: usize) -> Option<PathBuf> {
    if depth > 12 {
        return None;
    }
    let mut entries: Vec<_> = fs::read_dir(dir).ok()?.flatten().collect();
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let Ok(kind) = entry.file_type() else { continue };
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if kind.is_file() && name.starts_with("terraform-provider-aws") {
            let path = entry.path();
            if let Some(root) = path.ancestors().find(|a| a.ends_with("registry.terraform.io")) {
                if path.to_string_lossy().contains("registry.terraform.io/hashicorp/aws/") {
                    return root.parent().map(Path::to_path_buf);
                }
            }
        } else if kind.is_dir()
            && !(depth == 0 && dir == Path::new("/") && name == "tmp")
            && !NEVER_MIRRORS.contains(&name.as_ref())
        {
            if let Some(found) = find_aws_provider(&entry.path(), depth + 1) {
                return Some(found);
            }
        }
    }
    None
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap_or_else(|e| panic!("create {}: {e}", to.display()));
    for entry in fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display())).flatten() {
        let name = entry.file_name();
        // A person's local `terraform init` output is not part of the module.
        if name == ".terraform"
            || name == ".terraform.lock.hcl"
            || name.to_string_lossy().starts_with("terraform.tfstate")
        {
            continue;
        }
        let target = to.join(&name);
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap_or_else(|e| panic!("copy {}: {e}", entry.path().display()));
        }
    }
}

//! External programs the tests drive. A missing one is a loud failure that
//! says how to install it — these tests are never silently skipped.

use std::path::PathBuf;

pub const INSTALL_REGISTRY_TOOLS: &str = "apt-get install -y docker-registry skopeo umoci";

/// The AWS tools of the serverless tests (scripts/test installs them when missing).
pub const INSTALL_AWS_TOOLS: &str = "pip install \"moto[server]\" cfn-lint checkov cargo-lambda";

/// Absolute path of `tool` on `PATH`, or a panic naming the install command.
pub fn require(tool: &str, install: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into()])
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "\n\n`{tool}` is required by ferry's integration tests and was not found on PATH.\n\
                 Install it with:\n\n    {install}\n\n\
                 (these tests run against real components and are never skipped)\n"
            )
        })
}

pub fn docker_registry() -> PathBuf {
    require("docker-registry", INSTALL_REGISTRY_TOOLS)
}

pub fn skopeo() -> PathBuf {
    require("skopeo", INSTALL_REGISTRY_TOOLS)
}

pub fn openssl() -> PathBuf {
    require("openssl", "apt-get install -y openssl")
}

/// GNU time, used to read a child's peak resident set size.
pub fn gnu_time() -> PathBuf {
    let time = PathBuf::from("/usr/bin/time");
    if time.is_file() {
        return time;
    }
    panic!(
        "\n\n/usr/bin/time (GNU time) is required to measure ferry's peak memory.\n\
         Install it with:\n\n    apt-get install -y time\n"
    )
}

/// `moto_server`: real AWS APIs (SQS, DynamoDB, …) on 127.0.0.1.
pub fn moto_server() -> PathBuf {
    require("moto_server", INSTALL_AWS_TOOLS)
}

/// `cfn-lint`, the CloudFormation linter (understands the SAM transform).
pub fn cfn_lint() -> PathBuf {
    require("cfn-lint", INSTALL_AWS_TOOLS)
}

/// `checkov`, the IaC policy scanner.
pub fn checkov() -> PathBuf {
    require("checkov", INSTALL_AWS_TOOLS)
}

/// `terraform` (neither Debian nor PyPI ships it: the machine image carries it, with a
/// filesystem mirror of the hashicorp/aws provider).
pub fn terraform() -> PathBuf {
    require(
        "terraform",
        "a terraform >= 1.5 binary from HashiCorp on PATH (e.g. /usr/local/bin/terraform), \
         and the hashicorp/aws provider in a filesystem mirror (see tests/support/terraform.rs)",
    )
}

/// `kubectl`, pointed at the fake Kubernetes API server (scripts/test installs it when missing).
pub fn kubectl() -> PathBuf {
    require("kubectl", "apt-get install -y kubernetes-client  (or see https://kubernetes.io/docs/tasks/tools/)")
}

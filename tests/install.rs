//! `scripts/lib/install.sh`, which both of the README's commands (scripts/test and
//! examples/quickstart/run.sh) source to set up a fresh machine instead of stopping with
//! "X is missing". apt-get is replaced by a recording stand-in on PATH: the real one would
//! change the machine the tests run on.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// An executable shell script at `path`.
fn script(path: &Path, body: &str) {
    fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// A bin dir with an apt-get (and sudo, for non-root runs) that logs its arguments; when
/// `provides` is set, `install` puts an executable of each package's name into the bin dir.
fn stand_in_apt(dir: &Path, provides: bool) -> PathBuf {
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).unwrap();
    let log = dir.join("apt.log");
    let install = if provides {
        format!(
            "if [ \"$1\" = -o ]; then shift 2; fi\n\
             if [ \"$1\" = install ]; then\n  shift\n  for p in \"$@\"; do\n    \
             case \"$p\" in -*) ;; *) printf '#!/bin/sh\\n' > '{bin}'/\"$p\"; chmod +x '{bin}'/\"$p\" ;; esac\n  \
             done\nfi\n",
            bin = bin.display()
        )
    } else {
        String::new()
    };
    script(&bin.join("apt-get"), &format!("echo \"$*\" >> '{}'\n{install}", log.display()));
    script(&bin.join("sudo"), "exec \"$@\"\n");
    bin
}

fn source_and_run(bin: &Path, commands: &str) -> (bool, String) {
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new("bash")
        .args(["-c", &format!("set -euo pipefail\n. scripts/lib/install.sh\n{commands}")])
        .current_dir(repo_root())
        .env("PATH", path)
        .output()
        .expect("run bash");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn missing_tools_are_installed_from_debian_and_the_install_is_announced() {
    let dir = tempfile::tempdir().unwrap();
    let bin = stand_in_apt(dir.path(), true);
    let (ok, output) = source_and_run(
        &bin,
        "install_debian 'the quickstart runs them' ferry-test-tool-a ferry-test-tool-b:ferry-test-pkg-b sh:dash\n\
         require_tools ferry-test-tool-a ferry-test-pkg-b sh\n\
         echo ready",
    );
    assert!(ok, "install step failed:\n{output}");
    assert!(
        output.contains("==> installing ferry-test-tool-a ferry-test-pkg-b from Debian (the quickstart runs them)"),
        "the install is not announced with its packages and reason:\n{output}"
    );
    let apt = fs::read_to_string(dir.path().join("apt.log")).expect("apt-get was not run");
    let calls: Vec<&str> = apt.lines().collect();
    assert_eq!(calls.len(), 2, "expected apt-get update, then install: {calls:?}");
    assert!(calls[0].ends_with("update -qq"), "{calls:?}");
    assert!(
        calls[1].ends_with("install -y -qq ferry-test-tool-a ferry-test-pkg-b"),
        "only the missing packages: {calls:?}"
    );
}

#[test]
fn nothing_is_installed_when_every_tool_is_there() {
    let dir = tempfile::tempdir().unwrap();
    let bin = stand_in_apt(dir.path(), true);
    let (ok, output) = source_and_run(&bin, "install_debian 'why' sh bash:bash /bin/sh:dash\nrequire_tools sh bash");
    assert!(ok, "{output}");
    assert!(!output.contains("installing"), "announced an install of nothing:\n{output}");
    assert!(!dir.path().join("apt.log").exists(), "apt-get ran although nothing was missing");
}

#[test]
fn a_tool_still_missing_after_the_install_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let bin = stand_in_apt(dir.path(), false);
    let (ok, output) = source_and_run(
        &bin,
        "install_debian 'why' ferry-test-never-there\nrequire_tools ferry-test-never-there\necho reached",
    );
    assert!(!ok && !output.contains("reached"), "carried on without the tool:\n{output}");
    assert!(
        output.contains("error: ferry-test-never-there still missing after the install step"),
        "the error does not name the tool:\n{output}"
    );
}

#[test]
fn both_readme_commands_set_up_through_the_shared_install_script() {
    // The regression of issue 12 item 7: run.sh stopped with "docker-registry is missing".
    for (file, tools) in [
        (
            "examples/quickstart/run.sh",
            "install_debian \"the quickstart runs them\" docker-registry skopeo python3 curl",
        ),
        ("scripts/test", "install_debian \"the integration tests run them\""),
    ] {
        let text = fs::read_to_string(repo_root().join(file)).unwrap();
        assert!(text.contains("scripts/lib/install.sh"), "{file} does not source scripts/lib/install.sh");
        assert!(text.contains(tools), "{file} does not install what it runs ({tools})");
        assert!(!text.contains("is missing; install it with"), "{file} still stops instead of installing");
    }
}

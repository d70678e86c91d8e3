//! The operator commands as a person runs them: from any directory, against a configuration
//! file elsewhere.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::registry::free_port;
use support::serve::get_status;

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

#[test]
fn paths_are_relative_to_the_config_file_and_operator_commands_never_create_stores() {
    let config_dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = config_dir.path().join("ferry.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"data\"\n[worker]\nenabled = false\n\
             [registries.\"build.example:5000\"]\n[registries.\"dev.example:5000\"]\n\
             [[pipelines]]\nname = \"shop-api\"\nsource = \"build.example:5000/shop/api\"\n\
             [[pipelines.stages]]\nname = \"dev\"\ntarget = \"dev.example:5000/shop/api\"\n"
        ),
    )
    .unwrap();
    let data = config_dir.path().join("data");

    // Before anything ran: a clear error, and no empty database anywhere.
    let status =
        Command::new(FERRY).current_dir(elsewhere.path()).args(["status", "--config"]).arg(&config).output().unwrap();
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert!(!status.status.success(), "status on no data succeeded: {stderr}");
    assert!(stderr.contains("no Ferry data in") && stderr.contains(&data.display().to_string()), "{stderr}");
    assert!(!data.exists(), "a read-only command created {}", data.display());
    assert!(!elsewhere.path().join("data").exists() && !elsewhere.path().join(".ferry").exists());

    // `ferry serve` run from elsewhere keeps its data beside the configuration file.
    let mut serve = Command::new(FERRY)
        .current_dir(elsewhere.path())
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while get_status(port, "/healthz") != Some(200) {
        assert!(Instant::now() < deadline, "ferry serve did not become healthy");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(data.join("queue.db").exists(), "serve did not keep its data in {}", data.display());
    assert!(!elsewhere.path().join("data").exists());

    let status = Command::new(FERRY)
        .current_dir(elsewhere.path())
        .args(["status", "--json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let _ = serve.kill();
    let _ = serve.wait();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let pipelines: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(pipelines[0]["name"], "shop-api", "{pipelines:#}");
}

/// `ferry config check` reports every problem at once, in file order, with line and column;
/// unset variables are warnings unless `--strict`; a missing file is named once.
#[test]
fn config_check_reports_everything_serve_would_refuse_in_file_order() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.toml");
    std::fs::write(
        &config,
        "[server]\noperator_token_env = \"CHECK_TEST_TOKEN\"\n\
         [registries.\"a.example\"]\n[registries.\"b.example\"]\n\
         username_env = \"CHECK_TEST_UNSET_USER\"\npassword_env = \"CHECK_TEST_UNSET_PASS\"\n\
         [[pipelines]]\nname = \"shop\"\nsource = \"a.example/shop\"\n\
         [[pipelines.stages]]\nname = \"dev\"\ntarget = \"a.example/shop\"\nsoak_secs = 5\n\
         [[pipelines.stages]]\nname = \"prod\"\ntarget = \"b.example/shop\"\ngate = \"soak\"\n",
    )
    .unwrap();
    let check = |strict: bool| {
        let mut command = Command::new(FERRY);
        command.args(["config", "check"]).arg(&config).env("CHECK_TEST_TOKEN", "too-short");
        if strict {
            command.arg("--strict");
        }
        command.output().unwrap()
    };
    let run = check(false);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    let expected = [
        ":2:22: error: server.operator_token_env: the operator token in `CHECK_TEST_TOKEN` has 9 characters",
        ":5:16: warning: registries.\"b.example\".username_env: environment variable `CHECK_TEST_UNSET_USER` is not set",
        ":6:16: warning: registries.\"b.example\".password_env",
        ":11:8: warning: pipelines[0].stages[0] `dev`: `soak_secs` is ignored",
        ":12:10: error: pipelines[0].stages[0] `dev`.target: `a.example/shop` is also its source",
        ":15:8: error: pipelines[0].stages[1] `prod`: `gate = \"soak\"` without a duration",
    ];
    assert_eq!(lines.len(), expected.len() + 1, "{stderr}");
    for (line, expected) in lines.iter().zip(expected) {
        assert!(line.contains(expected), "expected {expected:?} in {line:?}\n{stderr}");
    }
    assert!(lines[expected.len()].contains("3 error(s), 3 warning(s)"), "{stderr}");

    // Without the errors, warnings alone pass, unless --strict.
    std::fs::write(
        &config,
        "[registries.\"a.example\"]\n[registries.\"b.example\"]\n\
         username_env = \"CHECK_TEST_UNSET_USER\"\npassword_env = \"CHECK_TEST_UNSET_PASS\"\n\
         [[pipelines]]\nname = \"shop\"\nsource = \"a.example/shop\"\n\
         [[pipelines.stages]]\nname = \"prod\"\ntarget = \"b.example/shop\"\n",
    )
    .unwrap();
    let run = check(false);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(String::from_utf8_lossy(&run.stdout).contains("ok (2 registries, 0 sources, 1 pipelines), 2 warning(s)"));
    let run = check(true);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success() && stderr.contains("error: registries.\"b.example\".username_env"), "{stderr}");

    let missing = Command::new(FERRY).args(["config", "check"]).arg(dir.path().join("nope.toml")).output().unwrap();
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success(), "{stderr}");
    assert_eq!(stderr.matches("No such file or directory").count(), 1, "{stderr}");
}

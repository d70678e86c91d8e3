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
        ":8:8: warning: pipelines[0] `shop`: no sender can start it (no [sources.*] is configured); only `ferry promote` can",
        ":11:8: warning: pipelines[0].stages[0] `dev`: `soak_secs` is ignored",
        ":12:10: error: pipelines[0].stages[0] `dev`.target: `a.example/shop` is also its source",
        ":15:8: error: pipelines[0].stages[1] `prod`: `gate = \"soak\"` without a duration",
    ];
    assert_eq!(lines.len(), expected.len() + 1, "{stderr}");
    for (line, expected) in lines.iter().zip(expected) {
        assert!(line.contains(expected), "expected {expected:?} in {line:?}\n{stderr}");
    }
    assert!(lines[expected.len()].contains("3 error(s), 4 warning(s)"), "{stderr}");

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
    assert!(String::from_utf8_lossy(&run.stdout).contains("ok (2 registries, 0 sources, 1 pipelines), 3 warning(s)"));
    let run = check(true);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success() && stderr.contains("error: registries.\"b.example\".username_env"), "{stderr}");

    let missing = Command::new(FERRY).args(["config", "check"]).arg(dir.path().join("nope.toml")).output().unwrap();
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success(), "{stderr}");
    assert_eq!(stderr.matches("No such file or directory").count(), 1, "{stderr}");
}

/// Errors `ferry serve` stops at — a syntax error, unknown keys and wrong types in several
/// tables, a reference to an unconfigured registry — are all reported in one run, in file order,
/// with the unreachable stages of what parsed.
#[test]
fn config_check_reports_every_table_s_errors_and_unreachable_stages_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.toml");
    let write_and_check = |text: &str| {
        std::fs::write(&config, text).unwrap();
        let run = Command::new(FERRY).args(["config", "check"]).arg(&config).env("CHECK_SECRET", "s").output().unwrap();
        (run.status.code(), String::from_utf8_lossy(&run.stderr).into_owned())
    };
    let text = "[server]\nlisten = \"127.0.0.1:8080\"\nlisten_port = 8080\n\
         [registries.\"a.example\"]\nplain_http = \"yes\"\n[registries.\"b.example\"]\n\
         [sources.generic]\nsecret_env = \"CHECK_SECRET\"\n\
         [[pipelines]]\nname = \"shop\"\nsource = \"a.example/shop\"\n\
         [[pipelines.stages]]\nname = \"dev\"\ntarget = \"b.example/shop\"\n\
         [[pipelines.stages]]\nname = \"prod\"\ntarget = \"c.example/shop\"\n\
         [[pipelines]]\nname = \"web\"\nsource = \"a.example/web\"\n\
         [[pipelines.stages]]\nname = \"dev\"\ntarget = \"b.example/web\"\n\
         [[pipelines.stages]]\nname = \"prod\"\ntarget = \"b.example/web-prod\"\ngate = \"after\"\n\
         [worker]\nconcurency = 4\n";
    let (code, stderr) = write_and_check(text);
    assert_eq!(code, Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    let expected = [
        ":3:1: error: unknown field `listen_port`",
        ":5:14: error: `plain_http`: invalid type: string \"yes\", expected a boolean",
        ":17:10: error: pipelines[0].stages[1].target: registry `c.example` is not configured",
        ":25:8: error: pipelines[1].stages[1] `prod`: unreachable: its `after` gate can never open: `dev` has no `notify`",
        ":29:1: error: unknown field `concurency`",
    ];
    assert_eq!(lines.len(), expected.len() + 1, "{stderr}");
    for (line, expected) in lines.iter().zip(expected) {
        assert!(line.contains(expected), "expected {expected:?} in {line:?}\n{stderr}");
    }
    assert!(lines[expected.len()].contains("5 error(s), 0 warning(s)"), "{stderr}");

    // Several syntax errors: each one, not only the first.
    let (code, stderr) = write_and_check("[server\nlisten = \"127.0.0.1:8080\"\n[worker]\nconcurrency = = 2\n");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.lines().next().is_some_and(|l| l.contains("ferry.toml:1:")), "{stderr}");
    assert!(stderr.lines().any(|l| l.contains("ferry.toml:4:")), "{stderr}");

    // A tag filter no tag passes, after the pipeline's own.
    let (code, stderr) = write_and_check(
        "[registries.\"a.example\"]\n[registries.\"b.example\"]\n[sources.generic]\nsecret_env = \"CHECK_SECRET\"\n\
         [[pipelines]]\nname = \"shop\"\nsource = \"a.example/shop\"\ntags = [\"nightly-*\"]\n\
         [[pipelines.stages]]\nname = \"prod\"\ntarget = \"b.example/shop\"\nsemver = true\n",
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(":10:8: error: pipelines[0].stages[0] `prod`: unreachable: no tag passes its tag filter"),
        "{stderr}"
    );
}

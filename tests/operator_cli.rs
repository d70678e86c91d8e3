//! The operator commands as a person runs them: from any directory, against a configuration
//! file elsewhere.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::registry::free_port;
use support::serve::get_status;
use support::{FerryServer, ferry};

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

    // --json: the findings as data, errors as {"error": {class, message, findings}} on stdout.
    let json = Command::new(FERRY).args(["config", "check", "--json", "--strict"]).arg(&config).output().unwrap();
    assert_eq!(json.status.code(), Some(1), "{}", String::from_utf8_lossy(&json.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(answer["error"]["class"], "config", "{answer:#}");
    let findings = answer["error"]["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 3, "the two unset variables and the pipeline no sender starts: {answer:#}");
    assert_eq!((&findings[0]["line"], &findings[0]["severity"]), (&serde_json::json!(3), &serde_json::json!("error")));
    let json = Command::new(FERRY).args(["config", "check", "--json"]).arg(&config).output().unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert!(json.status.success(), "{answer:#}");
    assert_eq!((&answer["ok"], &answer["warnings"], &answer["pipelines"]), (&true.into(), &3.into(), &1.into()));

    let missing = Command::new(FERRY).args(["config", "check"]).arg(dir.path().join("nope.toml")).output().unwrap();
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success(), "{stderr}");
    assert_eq!(stderr.matches("No such file or directory").count(), 1, "{stderr}");
}

/// A pipeline whose registries are never contacted by the tests that use it (no worker runs).
const IDLE_PIPELINE: &str = "[worker]\nenabled = false\n\
    [registries.\"build.example:5000\"]\n[registries.\"dev.example:5000\"]\n\
    [[pipelines]]\nname = \"shop-api\"\nsource = \"build.example:5000/shop/api\"\n\
    [[pipelines.stages]]\nname = \"dev\"\ntarget = \"dev.example:5000/shop/api\"\n";

const TOKEN: &str = "operator-cli-test-token";

/// The message of a failed run: exactly one `error:` line on stderr, no error chain.
fn one_sentence(run: &support::FerryRun) -> String {
    let error = run.failure().trim_end().to_string();
    assert_eq!(error.lines().count(), 1, "one line, no error chain: {error}");
    assert!(!error.contains("Caused by") && !error.contains("error sending request"), "{error}");
    error
}

/// An axum server on 127.0.0.1 (port 0) answering each path with `answer(path)`: status,
/// content type, body. It runs until the test process ends.
fn http_server(answer: fn(&str) -> (u16, &'static str, &'static str)) -> (u16, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let app = axum::Router::new().fallback(move |uri: axum::http::Uri| async move {
                let (status, content_type, body) = answer(uri.path());
                (axum::http::StatusCode::from_u16(status).unwrap(), [("content-type", content_type)], body)
            });
            axum::serve(listener, app).await.unwrap();
        });
    });
    (port, handle)
}

/// An HTTP server that is not Ferry: every path answers 404 with an HTML page, as a web server
/// or another service on the port would.
fn not_ferry_server() -> (u16, std::thread::JoinHandle<()>) {
    http_server(|_| (404, "text/html", "<html><body><h1>404 Not Found</h1></body></html>"))
}

/// `--server` mistakes each get one sentence that says what to check: no scheme, nothing
/// listening, a Ferry without its operations API, something that is not Ferry, a wrong token.
#[test]
fn server_errors_say_what_to_check_in_one_sentence() {
    // No scheme: a usage error, clap-style (exit 2), with the URL as it should be written.
    let run = ferry("status").args(["--server", "127.0.0.1:8080", "--token", TOKEN]).run();
    let error = run.failure().lines().next().unwrap().to_string();
    assert_eq!(run.status.code(), Some(2), "{error}");
    assert!(error.contains("has no scheme") && error.contains("http://127.0.0.1:8080"), "{error}");

    // Nothing listening.
    let down = format!("http://127.0.0.1:{}", free_port());
    let run = ferry("status").args(["--server", &down, "--token", TOKEN]).run();
    let error = one_sentence(&run);
    assert_eq!(run.status.code(), Some(1), "{error}");
    assert!(error.contains(&format!("is `ferry serve` running at {down}?")), "{error}");

    // A Ferry without an operator token: its API is off, and it says what to set.
    let off = FerryServer::start(free_port(), IDLE_PIPELINE, &[]);
    let run = ferry("history").args(["shop-api", "--server", &off.url(""), "--token", TOKEN]).run();
    let error = one_sentence(&run);
    assert!(error.contains("operations API") && error.contains("is off"), "{error}");
    assert!(error.contains("server.operator_token_env"), "says what to set: {error}");
    // A browser at its root is told the same.
    let (status, page) = off.get("/");
    assert_eq!(status, 404);
    assert!(page.contains("web console is not here") && page.contains("[identity]"), "{page}");

    // A Ferry from before the `api_off` answer: an empty 404 for /api/*, its /healthz answer.
    let (port, _old) = http_server(|path| match path {
        "/healthz" => (200, "application/json", r#"{"status":"ok"}"#),
        _ => (404, "text/plain", ""),
    });
    let old = format!("http://127.0.0.1:{port}");
    let run = ferry("status").args(["--server", &old, "--token", TOKEN]).run();
    let error = one_sentence(&run);
    assert!(error.contains(&format!("{old} is a ferry serve without its operations API")), "{error}");
    assert!(error.contains("server.operator_token_env") && error.contains("server.api_listen"), "{error}");

    // Something else on the port.
    let (port, _server) = not_ferry_server();
    let other = format!("http://127.0.0.1:{port}");
    let run = ferry("status").args(["--server", &other, "--token", TOKEN]).run();
    let error = one_sentence(&run);
    assert!(error.contains(&format!("{other} does not look like ferry serve")), "{error}");
    assert!(error.contains("404") && error.contains("text/html") && error.contains("check --server"), "{error}");

    // A wrong token.
    let on = FerryServer::start_with_operator_token(free_port(), IDLE_PIPELINE, &[], TOKEN);
    let run = ferry("status").args(["--server", &on.url(""), "--token", "not-the-operator-token"]).run();
    let error = one_sentence(&run);
    assert!(error.contains("refused the operator token (401)") && error.contains("--token"), "{error}");

    // With --json, the same errors are JSON on stdout with a class.
    let run = ferry("status").args(["--json", "--server", &down, "--token", TOKEN]).run();
    assert_eq!(run.status.code(), Some(1));
    let answer: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(answer["error"]["class"], "unreachable", "{answer:#}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("is `ferry serve` running"), "{answer:#}");
    let run = ferry("status").args(["--json", "--server", "localhost:8080"]).run();
    assert_eq!(run.status.code(), Some(2));
    let answer: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(answer["error"]["class"], "usage", "{answer:#}");
}

/// An unknown pipeline, stage, promotion or job is "not found" (404, exit 1) for every command,
/// over the API and on the stores alike; a malformed digest is a usage error (exit 2).
#[test]
fn unknown_names_are_not_found_for_every_command_and_malformed_digests_are_usage_errors() {
    let server = FerryServer::start_with_operator_token(free_port(), IDLE_PIPELINE, &[], TOKEN);
    let commands: &[&[&str]] = &[
        &["status", "nope"],
        &["history", "nope"],
        &["history", "shop-api", "nostage"],
        &["promote", "nope", "1.0", "--to", "dev", "--no-wait"],
        &["promote", "shop-api", "1.0", "--to", "nostage", "--no-wait"],
        &["rollback", "nope", "dev"],
        &["rollback", "shop-api", "nostage"],
        &["approve", "p-0000000000000000", "--no-wait"],
        &["reject", "p-0000000000000000"],
        &["show", "p-0000000000000000"],
        &["show", "no-such-job"],
        &["dlq", "redrive", "no-such-job", "--no-wait"],
    ];
    for command in commands {
        let over_api = server.cli(command[0]).args(&command[1..]).args(["--user", "alice"]).run();
        let error = one_sentence(&over_api);
        assert_eq!(over_api.status.code(), Some(1), "{command:?}: {error}");
        assert!(error.contains("not found: 404"), "{command:?} over the API: {error}");

        let local =
            ferry(command[0]).args(&command[1..]).args(["--user", "alice", "--config"]).arg(server.config_path()).run();
        let error_local = one_sentence(&local);
        assert_eq!(local.status.code(), Some(1), "{command:?}: {error_local}");
        assert!(error_local.contains("(not found)"), "{command:?} on the stores: {error_local}");
        // The same words both ways.
        let words = |e: &str| e.split(" (not found").next().unwrap().to_string();
        assert_eq!(words(&error), words(&error_local), "{command:?}");
    }
    let stage = server.cli("history").args(["shop-api", "nostage"]).run();
    assert!(stage.failure().contains("pipeline `shop-api` has no stage `nostage`"), "{}", stage.stderr);

    for command in [
        &["rollback", "shop-api", "dev", "--to", "sha256:1234"][..],
        &["promote", "shop-api", "sha256:xyz", "--to", "dev"][..],
        &["promote", "shop-api", "1.0/x", "--to", "dev"][..],
    ] {
        let run = server.cli(command[0]).args(&command[1..]).args(["--user", "alice"]).run();
        let error = run.failure();
        assert_eq!(run.status.code(), Some(2), "{command:?}: {error}");
        assert!(error.contains("invalid value") && error.contains("--help"), "clap-style: {error}");
    }
    let run = server.cli("rollback").args(["shop-api", "dev", "--to", "sha256:1234", "--json"]).run();
    let answer: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!((run.status.code(), &answer["error"]["class"]), (Some(2), &serde_json::json!("usage")), "{answer}");
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

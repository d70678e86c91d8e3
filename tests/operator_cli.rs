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

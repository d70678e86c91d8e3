//! `ferry serve` as a child process on a free port, with its config and data dir in a temp dir;
//! killed (SIGKILL, like a crash) on drop. It can be killed and started again on the same port,
//! configuration and data dir, and its operations API can be driven with the `ferry` CLI.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::cli::{FerryCommand, ferry};

/// The environment variable that carries the operator token to `ferry serve`.
const OPERATOR_TOKEN_ENV: &str = "FERRY_TEST_OPERATOR_TOKEN";

pub struct FerryServer {
    child: Child,
    port: u16,
    dir: TempDir,
    envs: Vec<(String, String)>,
    operator_token: Option<String>,
}

impl FerryServer {
    /// Starts `ferry serve` on `port` with `config` (TOML; `data_dir` is set here), passing
    /// `envs` (secrets) to it, and waits for `GET /healthz`.
    pub fn start(port: u16, config: &str, envs: &[(&str, &str)]) -> Self {
        Self::launch(port, config, envs, None)
    }

    /// Like [`FerryServer::start`], with the operations API (`/api/*`) on, guarded by `token`
    /// (at least 16 characters). [`FerryServer::cli`] runs `ferry` commands against it.
    pub fn start_with_operator_token(port: u16, config: &str, envs: &[(&str, &str)], token: &str) -> Self {
        Self::launch(port, config, envs, Some(token))
    }

    /// Like [`FerryServer::start_with_operator_token`] (without a token when `None`), with
    /// `server_keys` added to the `[server]` table.
    pub fn start_with_server_keys(
        port: u16,
        server_keys: &str,
        config: &str,
        envs: &[(&str, &str)],
        token: Option<&str>,
    ) -> Self {
        Self::launch_with(port, server_keys, config, envs, token)
    }

    fn launch(port: u16, config: &str, envs: &[(&str, &str)], token: Option<&str>) -> Self {
        Self::launch_with(port, "", config, envs, token)
    }

    fn launch_with(port: u16, server_keys: &str, config: &str, envs: &[(&str, &str)], token: Option<&str>) -> Self {
        let dir = tempfile::Builder::new().prefix("ferry-serve-").tempdir().expect("temp dir for ferry serve");
        let data_dir = dir.path().join("data");
        let mut server_table = format!("[server]\ndata_dir = {:?}\n{server_keys}\n", data_dir.display().to_string());
        let mut envs: Vec<(String, String)> = envs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        if let Some(token) = token {
            server_table.push_str(&format!("operator_token_env = {OPERATOR_TOKEN_ENV:?}\n"));
            envs.push((OPERATOR_TOKEN_ENV.into(), token.into()));
        }
        fs::write(dir.path().join("ferry.toml"), format!("{server_table}\n{config}")).expect("write ferry config");
        let child = spawn(dir.path(), port, &envs);
        let mut server = FerryServer { child, port, dir, envs, operator_token: token.map(String::from) };
        server.wait_healthy();
        server
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("ferry serve exited with {status}:\n{}", self.log());
            }
            if get_status(self.port, "/healthz") == Some(200) {
                return;
            }
            assert!(Instant::now() < deadline, "ferry serve not healthy after 20 s:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `GET path` on this server: status and body.
    pub fn get(&self, path: &str) -> (u16, String) {
        get_text(self.port, path).unwrap_or_else(|| panic!("GET {path}: no answer from ferry serve"))
    }

    /// The process id of `ferry serve`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Everything every run of this server logged (restarts append).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("ferry.log")).unwrap_or_default()
    }

    /// The embedded queue's SQLite file.
    pub fn queue_path(&self) -> PathBuf {
        self.dir.path().join("data").join("queue.db")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The configuration file `ferry serve` runs with (also usable with `ferry --config`).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("ferry.toml")
    }

    /// Stops the server the hard way (as a crash would) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills the server if it still runs, then starts a new `ferry serve` on the same port,
    /// configuration, secrets and data dir (queue and ledger survive), and waits until healthy.
    pub fn restart(&mut self) {
        self.kill();
        let log = self.dir.path().join("ferry.log");
        let mut file = fs::OpenOptions::new().append(true).open(&log).expect("ferry log");
        std::io::Write::write_all(&mut file, b"\n----- ferry serve restarted by the test -----\n").expect("log marker");
        self.child = spawn(self.dir.path(), self.port, &self.envs);
        self.wait_healthy();
    }

    /// Sets (`Some`) or removes (`None`) an environment variable for the next
    /// [`FerryServer::restart`] (e.g. disarms `FERRY_FAILPOINTS` after a planned crash).
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.envs.retain(|(k, _)| k != key);
        if let Some(value) = value {
            self.envs.push((key.to_string(), value.to_string()));
        }
    }

    /// `ferry SUBCOMMAND --server URL --token TOKEN`: the operator CLI pointed at this server.
    pub fn cli(&self, subcommand: &str) -> FerryCommand {
        let token = self
            .operator_token
            .as_deref()
            .expect("start the server with FerryServer::start_with_operator_token to use its operations API");
        ferry(subcommand).args(["--server", &self.url("")]).args(["--token", token]).timeout(Duration::from_secs(30))
    }

    /// Posts `body` to `/hooks/generic` signed with `secret` as a CI job would
    /// (`X-Ferry-Timestamp`, `X-Ferry-Signature`); Ferry's status and JSON answer.
    pub fn post_generic(&self, secret: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let body = serde_json::to_vec(body).expect("JSON body");
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs()
            .to_string();
        let signature = ferry_core::intake::verify::generic_signature(secret.as_bytes(), &timestamp, &body);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let response = reqwest::Client::new()
                .post(self.url("/hooks/generic"))
                .header("Content-Type", "application/json")
                .header("X-Ferry-Timestamp", timestamp)
                .header("X-Ferry-Signature", signature)
                .body(body)
                .send()
                .await
                .expect("ferry answers");
            let status = response.status().as_u16();
            (status, response.json().await.unwrap_or(serde_json::Value::Null))
        })
    }

    /// Polls `probe` every 100 ms until it gives a value; panics naming `what` and showing the
    /// log after `timeout`.
    pub fn wait_until<T>(&self, what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = probe() {
                return value;
            }
            assert!(Instant::now() < deadline, "{what}: not so after {timeout:?}\nferry log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the log contains `needle`; panics with the log after `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log().contains(needle) {
            assert!(Instant::now() < deadline, "`{needle}` not logged within {timeout:?}; ferry log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for FerryServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `ferry serve --config DIR/ferry.toml --listen 127.0.0.1:PORT`, logging (appending) to
/// `DIR/ferry.log`.
fn spawn(dir: &Path, port: u16, envs: &[(String, String)]) -> Child {
    let log = fs::OpenOptions::new().create(true).append(true).open(dir.join("ferry.log")).expect("ferry log");
    let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
    command
        .args(["serve", "--config"])
        .arg(dir.join("ferry.toml"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone log"))
        .stderr(log);
    for (k, v) in envs {
        command.env(k, v);
    }
    command.spawn().expect("start ferry serve")
}

/// `GET path` over a plain socket: the status code, if the server answered.
pub fn get_status(port: u16, path: &str) -> Option<u16> {
    get_text(port, path).map(|(status, _)| status)
}

/// `GET path` over a fresh connection: status and body (Ferry's answers carry a content-length).
pub fn get_text(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default();
    Some((status, body))
}

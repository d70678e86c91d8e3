//! `ferry serve` as a child process on a free port, with its config and data dir in a temp dir;
//! killed (SIGKILL, like a crash) on drop.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub struct FerryServer {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl FerryServer {
    /// Starts `ferry serve` on `port` with `config` (TOML; `data_dir` is set here), passing
    /// `envs` (secrets) to it, and waits for `GET /healthz`.
    pub fn start(port: u16, config: &str, envs: &[(&str, &str)]) -> Self {
        let dir = tempfile::Builder::new().prefix("ferry-serve-").tempdir().expect("temp dir for ferry serve");
        let data_dir = dir.path().join("data");
        let config = format!("[server]\ndata_dir = {:?}\n\n{config}", data_dir.display().to_string());
        let config_path = dir.path().join("ferry.toml");
        fs::write(&config_path, config).expect("write ferry config");
        let log = fs::File::create(dir.path().join("ferry.log")).expect("ferry log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
        command
            .args(["serve", "--config"])
            .arg(&config_path)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log);
        for (k, v) in envs {
            command.env(k, v);
        }
        let child = command.spawn().expect("start ferry serve");
        let mut server = FerryServer { child, port, dir };
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

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

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

    /// Stops the server the hard way (as a crash would) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for FerryServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `GET path` over a plain socket: the status code, if the server answered.
pub fn get_status(port: u16, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

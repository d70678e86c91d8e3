//! `moto_server` as a child process: real AWS APIs (SQS, DynamoDB, Lambda, …) on a free
//! 127.0.0.1 port, killed on drop, and a small client for the AWS JSON protocols.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use super::tools;

/// The region every moto test uses (moto keeps one state per region).
pub const REGION: &str = "us-east-1";

/// One running `moto_server`, killed on drop.
pub struct MotoServer {
    child: Child,
    endpoint: String,
    dir: TempDir,
}

impl MotoServer {
    /// Starts `moto_server -H 127.0.0.1 -p 0` (the OS picks the port; moto prints it) and
    /// waits until it answers.
    pub fn start() -> Self {
        let moto = tools::moto_server();
        let dir = tempfile::tempdir().expect("temp dir for moto");
        let log_path = dir.path().join("moto.log");
        let log = fs::File::create(&log_path).expect("moto log file");
        let child = Command::new(&moto)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("moto log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", moto.display()));
        let mut server = Self { child, endpoint: String::new(), dir };
        server.endpoint = server.wait_for_port(&log_path);
        server
    }

    /// `http://127.0.0.1:PORT`: what `AWS_ENDPOINT_URL` or a terraform endpoint takes.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("moto.log")
    }

    /// Reads the `Running on http://127.0.0.1:PORT` line, then waits for `/moto-api/` to answer.
    fn wait_for_port(&mut self, log_path: &Path) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = fs::read_to_string(log_path).unwrap_or_default();
            if let Some(endpoint) = log
                .split_whitespace()
                .find(|word| word.starts_with("http://127.0.0.1:") && word.len() > "http://127.0.0.1:".len())
            {
                let endpoint = endpoint.trim_end_matches('/').to_string();
                if ping(&endpoint) {
                    return endpoint;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("moto_server exited with {status} before answering:\n{log}");
            }
            if Instant::now() > deadline {
                panic!("moto_server did not answer on 127.0.0.1 within 60 s; its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One call of an AWS JSON-protocol API (SQS: `AmazonSQS`, DynamoDB:
    /// `DynamoDB_20120810`), e.g. `call("sqs", "AmazonSQS.GetQueueAttributes", body)`.
    /// moto does not check signatures; the credential scope names the region.
    pub async fn call(&self, service: &str, target: &str, body: Value) -> Value {
        let response = reqwest::Client::new()
            .post(format!("{}/", self.endpoint))
            .header("Content-Type", "application/x-amz-json-1.0")
            .header("X-Amz-Target", target)
            .header(
                "Authorization",
                format!(
                    "AWS4-HMAC-SHA256 Credential=test/20260101/{REGION}/{service}/aws4_request, \
                     SignedHeaders=host, Signature=0"
                ),
            )
            .body(body.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{target} to moto at {}: {e}", self.endpoint));
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert!(status.is_success(), "{target} answered {status}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{target} answered non-JSON ({e}): {text}"))
    }

    /// A GET of one of moto's REST APIs (e.g. Lambda's `/2015-03-31/functions/`).
    pub async fn get(&self, service: &str, path: &str) -> Value {
        let response = reqwest::Client::new()
            .get(format!("{}{path}", self.endpoint))
            .header(
                "Authorization",
                format!(
                    "AWS4-HMAC-SHA256 Credential=test/20260101/{REGION}/{service}/aws4_request, \
                     SignedHeaders=host, Signature=0"
                ),
            )
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} from moto at {}: {e}", self.endpoint));
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert!(status.is_success(), "GET {path} answered {status}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {path} answered non-JSON ({e}): {text}"))
    }
}

/// Whether moto's own API answers at `endpoint` (blocking, for start-up).
fn ping(endpoint: &str) -> bool {
    let Some(addr) = endpoint.strip_prefix("http://") else { return false };
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else { return false };
    use std::io::{Read, Write};
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET /moto-api/ HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

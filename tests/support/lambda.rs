//! A local Lambda Runtime API (a fake of AWS's, named as one: no Lambda service runs here) that
//! drives Ferry's real function binaries: a function process polls
//! `GET /2018-06-01/runtime/invocation/next`, gets the event the test queued, and posts its answer
//! to `…/invocation/{id}/response` (or `…/error`). The endpoints follow the Runtime API reference:
//! <https://docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html>.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;
use tokio::sync::Notify;

/// A Lambda function binary cargo built beside the `ferry` binary (`scripts/test` builds every
/// binary before the tests: `cargo build --workspace --bins`).
pub fn function_binary(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_BIN_EXE_ferry")).parent().unwrap().to_path_buf();
    let binary = dir.join(name);
    assert!(
        binary.exists(),
        "{} is missing: build the functions first (`cargo build --workspace --bins`, as scripts/test does)",
        binary.display()
    );
    binary
}

/// What a function answered to one invocation.
#[derive(Debug, Clone)]
pub enum Answer {
    Response(Value),
    Error(Value),
}

impl Answer {
    /// The response, or a panic naming the function's error.
    pub fn response(self) -> Value {
        match self {
            Answer::Response(value) => value,
            Answer::Error(error) => panic!("the function failed: {error:#}"),
        }
    }
}

#[derive(Default)]
struct Shared {
    queued: VecDeque<(String, Value, u64)>,
    answers: HashMap<String, Answer>,
    init_error: Option<Value>,
    first_next: Option<Instant>,
}

#[derive(Clone, Default)]
struct RuntimeState {
    shared: Arc<Mutex<Shared>>,
    changed: Arc<Notify>,
}

/// One fake Runtime API on 127.0.0.1 (port 0), serving one function process.
pub struct LambdaRuntime {
    addr: SocketAddr,
    state: RuntimeState,
    _runtime: tokio::runtime::Runtime,
    function: Option<Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
    started: Option<Instant>,
}

impl LambdaRuntime {
    pub fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let state = RuntimeState::default();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind runtime API");
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route("/2018-06-01/runtime/invocation/{id}/response", post(response))
            .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(state.clone());
        runtime.spawn(async move { axum::serve(listener, app).await });
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("function.log");
        LambdaRuntime { addr, state, _runtime: runtime, function: None, log, _dir: dir, started: None }
    }

    /// Starts `binary` as the function `name`, with the Lambda environment plus `envs`.
    pub fn run_function(&mut self, binary: &Path, name: &str, envs: &[(&str, String)]) {
        let log = std::fs::File::create(&self.log).unwrap();
        let mut command = Command::new(binary);
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AWS_LAMBDA_RUNTIME_API", self.addr.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", name)
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "test")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{name}"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (key, value) in envs {
            command.env(key, value);
        }
        self.started = Some(Instant::now());
        self.function = Some(command.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display())));
    }

    /// From process start to the function's first `next` request: its init time.
    pub fn init_time(&self, timeout: Duration) -> Duration {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(first) = self.state.shared.lock().unwrap().first_next {
                return first - self.started.expect("a function was started");
            }
            self.assert_alive();
            assert!(Instant::now() < deadline, "the function never asked for an event:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Hands `event` to the function and waits for its answer (the invocation's deadline is
    /// 15 minutes away, Lambda's longest).
    pub fn invoke(&self, event: &Value, timeout: Duration) -> Answer {
        self.invoke_with_deadline(event, Duration::from_secs(900), timeout)
    }

    /// Like [`LambdaRuntime::invoke`], with the function told its deadline is `deadline` away.
    pub fn invoke_with_deadline(&self, event: &Value, deadline: Duration, timeout: Duration) -> Answer {
        let id = uuid_like();
        let deadline_ms = (SystemTime::now().duration_since(UNIX_EPOCH).unwrap() + deadline).as_millis() as u64;
        self.state.shared.lock().unwrap().queued.push_back((id.clone(), event.clone(), deadline_ms));
        self.state.changed.notify_waiters();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(answer) = self.state.shared.lock().unwrap().answers.remove(&id) {
                return answer;
            }
            self.assert_alive();
            assert!(Instant::now() < deadline, "no answer to invocation {id} after {timeout:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The function process's peak resident memory so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let pid = self.function.as_ref().expect("a function was started").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the function process is alive");
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM in /proc/PID/status");
        line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).expect("VmHWM in KiB")
    }

    pub fn log(&self) -> String {
        let mut log = std::fs::read_to_string(&self.log).unwrap_or_default();
        if let Some(error) = &self.state.shared.lock().unwrap().init_error {
            log.push_str(&format!("\ninit error: {error:#}"));
        }
        log
    }

    fn assert_alive(&self) {
        if let Some(error) = &self.state.shared.lock().unwrap().init_error {
            panic!(
                "the function failed to start: {error:#}\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

impl Drop for LambdaRuntime {
    fn drop(&mut self) {
        if let Some(child) = &mut self.function {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn uuid_like() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("req-{nanos:x}")
}

async fn next(State(state): State<RuntimeState>) -> Response {
    loop {
        let changed = state.changed.notified();
        {
            let mut shared = state.shared.lock().unwrap();
            shared.first_next.get_or_insert_with(Instant::now);
            if let Some((id, event, deadline_ms)) = shared.queued.pop_front() {
                let mut headers = HeaderMap::new();
                headers.insert("lambda-runtime-aws-request-id", HeaderValue::from_str(&id).unwrap());
                headers.insert("lambda-runtime-deadline-ms", HeaderValue::from(deadline_ms));
                headers.insert(
                    "lambda-runtime-invoked-function-arn",
                    HeaderValue::from_static("arn:aws:lambda:us-east-1:123456789012:function:ferry"),
                );
                headers.insert(
                    "lambda-runtime-trace-id",
                    HeaderValue::from_static("Root=1-00000000-000000000000000000000000"),
                );
                headers.insert("content-type", HeaderValue::from_static("application/json"));
                return (StatusCode::OK, headers, event.to_string()).into_response();
            }
        }
        changed.await;
    }
}

fn json_or_text(body: &Bytes) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

async fn response(State(state): State<RuntimeState>, UrlPath(id): UrlPath<String>, body: Bytes) -> StatusCode {
    state.shared.lock().unwrap().answers.insert(id, Answer::Response(json_or_text(&body)));
    StatusCode::ACCEPTED
}

async fn error(State(state): State<RuntimeState>, UrlPath(id): UrlPath<String>, body: Bytes) -> StatusCode {
    state.shared.lock().unwrap().answers.insert(id, Answer::Error(json_or_text(&body)));
    StatusCode::ACCEPTED
}

async fn init_error(State(state): State<RuntimeState>, body: Bytes) -> StatusCode {
    state.shared.lock().unwrap().init_error = Some(json_or_text(&body));
    StatusCode::ACCEPTED
}

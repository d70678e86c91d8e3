//! Runs the `ferry` binary under test with a clean environment and a timeout.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use super::tools;

/// Variables through which the environment could hand ferry credentials the
/// test did not choose.
const AMBIENT_AUTH_VARS: &[&str] = &["REGISTRY_AUTH_FILE", "DOCKER_CONFIG", "FERRY_SRC_CREDS", "FERRY_DEST_CREDS"];

/// `ferry copy ...` under construction.
pub struct FerryCommand {
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    timeout: Duration,
    measure_memory: bool,
    stdin: Option<Vec<u8>>,
}

/// Start a `ferry copy` invocation.
pub fn ferry_copy() -> FerryCommand {
    ferry("copy")
}

/// Start a `ferry SUBCOMMAND` invocation.
pub fn ferry(subcommand: &str) -> FerryCommand {
    FerryCommand {
        args: vec![subcommand.into()],
        envs: Vec::new(),
        timeout: Duration::from_secs(180),
        measure_memory: false,
        stdin: None,
    }
}

impl FerryCommand {
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs.push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Kill ferry and fail the test if it runs longer than this.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Feed `input` to ferry's stdin (else stdin is empty).
    pub fn stdin(mut self, input: &str) -> Self {
        self.stdin = Some(input.as_bytes().to_vec());
        self
    }

    /// Run under GNU time to learn the peak resident set size.
    pub fn measure_memory(mut self) -> Self {
        self.measure_memory = true;
        self
    }

    pub fn run(self) -> FerryRun {
        let scratch = tempfile::Builder::new().prefix("ferry-run-").tempdir().expect("temp dir for ferry run");
        let home = scratch.path().join("home");
        fs::create_dir_all(&home).expect("empty HOME");
        let stdout_path = scratch.path().join("stdout");
        let stderr_path = scratch.path().join("stderr");
        let time_path = scratch.path().join("time");

        let ferry = env!("CARGO_BIN_EXE_ferry");
        let mut cmd = if self.measure_memory {
            let mut cmd = Command::new(tools::gnu_time());
            cmd.arg("-v").arg("-o").arg(&time_path).arg(ferry);
            cmd
        } else {
            Command::new(ferry)
        };
        cmd.args(&self.args)
            .env("HOME", &home)
            .stdin(if self.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(fs::File::create(&stdout_path).expect("stdout file"))
            .stderr(fs::File::create(&stderr_path).expect("stderr file"));
        for var in AMBIENT_AUTH_VARS {
            cmd.env_remove(var);
        }
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        let command_line =
            format!("ferry {}", self.args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" "));

        let started = Instant::now();
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {ferry}: {e}"));
        if let (Some(input), Some(mut pipe)) = (&self.stdin, child.stdin.take()) {
            use std::io::Write as _;
            pipe.write_all(input).expect("write ferry's stdin");
        }
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for ferry") {
                break status;
            }
            if started.elapsed() > self.timeout {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "`{command_line}` still running after {:?}; killed.\nstderr so far:\n{}",
                    self.timeout,
                    fs::read_to_string(&stderr_path).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let elapsed = started.elapsed();

        let max_rss_kib = if self.measure_memory {
            let report = fs::read_to_string(&time_path).expect("GNU time report");
            Some(
                report
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes):"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or_else(|| panic!("no peak RSS in GNU time report:\n{report}")),
            )
        } else {
            None
        };

        FerryRun {
            command_line,
            status,
            stdout: fs::read_to_string(&stdout_path).unwrap_or_default(),
            stderr: fs::read_to_string(&stderr_path).unwrap_or_default(),
            elapsed,
            max_rss_kib,
            _scratch: scratch,
        }
    }
}

/// What one `ferry` run did.
pub struct FerryRun {
    pub command_line: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    /// Peak RSS in KiB, when run with [`FerryCommand::measure_memory`].
    pub max_rss_kib: Option<u64>,
    _scratch: TempDir,
}

impl FerryRun {
    /// Assert success and return stdout.
    pub fn success(&self) -> &str {
        assert!(
            self.status.success(),
            "`{}` failed ({}) after {:?}\nstderr:\n{}\nstdout:\n{}",
            self.command_line,
            self.status,
            self.elapsed,
            self.stderr,
            self.stdout
        );
        &self.stdout
    }

    /// Assert success and parse stdout as one JSON document (what `--json` prints).
    pub fn json(&self) -> Value {
        serde_json::from_str(self.success().trim()).unwrap_or_else(|e| {
            panic!(
                "`{}` printed no single JSON document on stdout ({e}):\n{}\nstderr:\n{}",
                self.command_line, self.stdout, self.stderr
            )
        })
    }

    /// Assert success and parse the `--json` report from stdout.
    pub fn report(&self) -> CopyReport {
        assert!(
            self.status.success(),
            "`{}` failed ({}) after {:?}\nstderr:\n{}\nstdout:\n{}",
            self.command_line,
            self.status,
            self.elapsed,
            self.stderr,
            self.stdout
        );
        let json: Value = serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "`{}` printed no single JSON object on stdout ({e}):\n{}\nstderr:\n{}",
                self.command_line, self.stdout, self.stderr
            )
        });
        eprintln!("`{}` took {:?}, peak RSS {:?} KiB: {json}", self.command_line, self.elapsed, self.max_rss_kib);
        CopyReport::from_json(json)
    }

    /// Assert a non-zero exit with an `error: ...` message on stderr, and
    /// return that message: stderr from its first `error:` line on, without
    /// the log lines before it, so assertions judge what the user is told.
    pub fn failure(&self) -> &str {
        assert!(
            !self.status.success(),
            "`{}` was expected to fail but exited 0\nstdout:\n{}\nstderr:\n{}",
            self.command_line,
            self.stdout,
            self.stderr
        );
        assert!(
            self.status.code().is_some(),
            "`{}` died by a signal ({}) instead of exiting with an error\nstderr:\n{}",
            self.command_line,
            self.status,
            self.stderr
        );
        assert!(
            !self.stderr.contains("panicked at"),
            "`{}` panicked instead of reporting an error:\n{}",
            self.command_line,
            self.stderr
        );
        let start = self
            .stderr
            .match_indices("error:")
            .map(|(i, _)| i)
            .find(|&i| i == 0 || self.stderr.as_bytes()[i - 1] == b'\n')
            .unwrap_or_else(|| {
                panic!("`{}` failed without an `error: ...` line on stderr:\n{}", self.command_line, self.stderr)
            });
        eprintln!(
            "`{}` failed as expected ({}) after {:?}:\n{}",
            self.command_line, self.status, self.elapsed, self.stderr
        );
        &self.stderr[start..]
    }
}

/// The `--json` object `ferry copy` prints.
#[derive(Debug, Clone)]
pub struct CopyReport {
    pub digest: String,
    pub media_type: String,
    pub bytes_transferred: u64,
    pub blobs_copied: u64,
    pub blobs_mounted: u64,
    pub blobs_skipped: u64,
    pub referrers_copied: u64,
    pub seconds: f64,
    pub raw: Value,
}

impl CopyReport {
    fn from_json(raw: Value) -> Self {
        let text =
            |k: &str| raw[k].as_str().unwrap_or_else(|| panic!("--json report lacks string `{k}`: {raw}")).to_string();
        let count = |k: &str| {
            raw[k].as_u64().unwrap_or_else(|| panic!("--json report lacks non-negative integer `{k}`: {raw}"))
        };
        let seconds = raw["seconds"].as_f64().unwrap_or_else(|| panic!("--json report lacks number `seconds`: {raw}"));
        assert!(seconds.is_finite() && seconds >= 0.0, "--json `seconds` is {seconds}: {raw}");
        Self {
            digest: text("digest"),
            media_type: text("media_type"),
            bytes_transferred: count("bytes_transferred"),
            blobs_copied: count("blobs_copied"),
            blobs_mounted: count("blobs_mounted"),
            blobs_skipped: count("blobs_skipped"),
            referrers_copied: count("referrers_copied"),
            seconds,
            raw,
        }
    }

    /// copied + mounted + skipped.
    pub fn blobs_total(&self) -> u64 {
        self.blobs_copied + self.blobs_mounted + self.blobs_skipped
    }
}

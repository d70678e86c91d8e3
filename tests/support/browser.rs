//! A real headless Chromium for the web console's tests, driven through `chromedriver`
//! (WebDriver, with the `fantoccini` client).
//!
//! [`Browser::start`] starts `chromedriver --port=P` on a free port, waits until it answers
//! `/status`, and opens one headless session with a fresh profile directory; dropping the
//! `Browser` ends the session and kills chromedriver's whole process group, Chromium included.
//! The API is blocking (each call runs on the browser's own runtime): use it from `#[test]`
//! functions, not from inside a tokio runtime. Start one browser per test: a session start is
//! the expensive part (see [`Browser::started_in`]).

use std::fs;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element as WebElement;
use fantoccini::error::CmdError;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use super::registry::free_port;
use super::tools;

/// How to get the browser when it is missing (scripts/test does this itself).
pub const INSTALL_BROWSER: &str = "apt-get install -y chromium chromium-driver";

/// chromedriver's answer to `/status` and the session start, on a busy 2-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Browser {
    runtime: tokio::runtime::Runtime,
    client: Option<Client>,
    chromedriver: Child,
    dir: tempfile::TempDir,
    started_in: Duration,
}

/// A cookie as the browser holds it (read back through WebDriver).
#[derive(Debug, Clone)]
pub struct BrowserCookie {
    pub name: String,
    pub value: String,
    pub path: Option<String>,
    pub domain: Option<String>,
    pub http_only: bool,
    pub secure: bool,
    /// `Strict`, `Lax` or `None` as the browser reports it; `None` when it reports nothing.
    pub same_site: Option<String>,
}

/// An element found on the current page.
pub struct Element<'b> {
    browser: &'b Browser,
    inner: WebElement,
    css: String,
}

impl Browser {
    /// chromedriver on a free 127.0.0.1 port and a headless Chromium session (1400×1000).
    pub fn start() -> Self {
        let began = Instant::now();
        let chromedriver = tools::require("chromedriver", INSTALL_BROWSER);
        let chromium = tools::require("chromium", INSTALL_BROWSER);
        let dir = tempfile::tempdir().expect("temp dir for the browser");
        let profile = dir.path().join("profile");
        fs::create_dir_all(&profile).expect("create the Chromium profile dir");
        let log_path = dir.path().join("chromedriver.log");
        let log = fs::File::create(&log_path).expect("chromedriver log");
        let port = free_port();
        let child = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log_path.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log"))
            .stderr(log)
            // Its own process group: dropping the browser kills chromedriver and every Chromium
            // process it started, even when the session could not be closed.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", chromedriver.display()));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime for the WebDriver client");
        let mut browser = Browser { runtime, client: None, chromedriver: child, dir, started_in: Duration::ZERO };
        let webdriver = format!("http://127.0.0.1:{port}");
        browser.wait_until_ready(&webdriver);

        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-dev-shm-usage",
                    "--window-size=1400,1000",
                    format!("--user-data-dir={}", profile.display()),
                    "--no-first-run",
                    "--no-default-browser-check",
                ],
            },
        });
        let Value::Object(capabilities) = capabilities else { unreachable!("a JSON object") };
        let connected = browser.runtime.block_on(async {
            let mut builder = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
            builder.capabilities(capabilities);
            tokio::time::timeout(START_TIMEOUT, builder.connect(&webdriver)).await
        });
        match connected {
            Ok(Ok(client)) => browser.client = Some(client),
            Ok(Err(e)) => panic!("open a headless Chromium session at {webdriver}: {e}\n{}", browser.log()),
            Err(_) => panic!("no Chromium session within {START_TIMEOUT:?} at {webdriver}\n{}", browser.log()),
        }
        browser.started_in = began.elapsed();
        browser
    }

    fn wait_until_ready(&mut self, webdriver: &str) {
        let deadline = Instant::now() + START_TIMEOUT;
        let status = format!("{webdriver}/status");
        loop {
            if let Ok(Some(exit)) = self.chromedriver.try_wait() {
                panic!("chromedriver exited ({exit}) before answering {status}\n{}", self.log());
            }
            let ready = self.runtime.block_on(async {
                let answer = reqwest::Client::new().get(&status).timeout(Duration::from_secs(5)).send().await.ok()?;
                answer.json::<Value>().await.ok()
            });
            if ready.as_ref().and_then(|v| v["value"]["ready"].as_bool()) == Some(true) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver not ready at {status} after {START_TIMEOUT:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// chromedriver + Chromium start and the session opening, as measured by [`Browser::start`].
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// chromedriver's log (its own messages and Chromium's stderr).
    pub fn log(&self) -> String {
        let log = fs::read_to_string(self.dir.path().join("chromedriver.log")).unwrap_or_default();
        let tail: String =
            log.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        format!("chromedriver log (last 40 lines):\n{tail}")
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("the session is open")
    }

    /// Runs one WebDriver command; panics naming `what` when it fails.
    fn run<T>(&self, what: &str, command: impl std::future::Future<Output = Result<T, CmdError>>) -> T {
        match self.runtime.block_on(command) {
            Ok(value) => value,
            Err(e) => panic!("browser: {what}: {e}"),
        }
    }

    /// Navigates to `url` and waits for the page load.
    pub fn goto(&self, url: &str) {
        self.run(&format!("go to {url}"), self.client().goto(url));
    }

    pub fn current_url(&self) -> String {
        self.run("read the current URL", self.client().current_url()).to_string()
    }

    /// The page's HTML as the browser has it now.
    pub fn source(&self) -> String {
        self.run("read the page source", self.client().source())
    }

    pub fn refresh(&self) {
        self.run("reload the page", self.client().refresh());
    }

    /// Runs `script` in the page (`arguments[i]` are `args`); what it returns.
    pub fn script(&self, script: &str, args: Vec<Value>) -> Value {
        self.run(&format!("run script `{script}`"), self.client().execute(script, args))
    }

    /// The first element matching `css` now, or `None`.
    pub fn try_find(&self, css: &str) -> Option<Element<'_>> {
        match self.runtime.block_on(self.client().find(Locator::Css(css))) {
            Ok(inner) => Some(Element { browser: self, inner, css: css.into() }),
            Err(e) if e.is_no_such_element() => None,
            Err(e) => panic!("browser: find `{css}` on {}: {e}", self.current_url()),
        }
    }

    /// The first element matching `css`; panics with the URL and page head when there is none.
    pub fn find(&self, css: &str) -> Element<'_> {
        self.try_find(css).unwrap_or_else(|| panic!("no element `{css}`\n{}", self.describe_page()))
    }

    /// Every element matching `css`, in document order.
    pub fn find_all(&self, css: &str) -> Vec<Element<'_>> {
        self.run(&format!("find all `{css}`"), self.client().find_all(Locator::Css(css)))
            .into_iter()
            .map(|inner| Element { browser: self, inner, css: css.into() })
            .collect()
    }

    /// Clicks the element matching `css`.
    pub fn click(&self, css: &str) {
        self.find(css).click();
    }

    /// Replaces the value of the input matching `css` with `text`, typed as keys.
    pub fn fill(&self, css: &str, text: &str) {
        self.find(css).fill(text);
    }

    /// The rendered text of the element matching `css`.
    pub fn text_of(&self, css: &str) -> String {
        self.find(css).text()
    }

    /// Polls (every 100 ms) until an element matches `css`; panics after `timeout` naming what
    /// was awaited, the current URL and the head of the page source.
    pub fn wait_for(&self, css: &str, timeout: Duration) -> Element<'_> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(element) = self.try_find(css) {
                return element;
            }
            if Instant::now() >= deadline {
                panic!("waited {timeout:?} for an element `{css}`\n{}", self.describe_page());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls until the element matching `css` exists and its text contains `needle`; the text.
    pub fn wait_for_text(&self, css: &str, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            if let Some(element) = self.try_find(css) {
                // The element may be replaced between the find and the read (live refresh).
                if let Ok(text) = self.runtime.block_on(element.inner.text()) {
                    if text.contains(needle) {
                        return text;
                    }
                    last = Some(text);
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "waited {timeout:?} for `{css}` to contain {needle:?}; its text: {last:?}\n{}",
                    self.describe_page()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls until the current URL contains `needle` (a redirect landed); the URL.
    pub fn wait_for_url(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let url = self.current_url();
            if url.contains(needle) {
                return url;
            }
            if Instant::now() >= deadline {
                panic!("waited {timeout:?} for a URL containing {needle:?}\n{}", self.describe_page());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The current URL and the first 2,000 characters of the page source, for failure messages.
    pub fn describe_page(&self) -> String {
        let url = self.runtime.block_on(self.client().current_url()).map(|u| u.to_string());
        let source = self.runtime.block_on(self.client().source()).unwrap_or_else(|e| format!("(unreadable: {e})"));
        let head: String = source.chars().take(2000).collect();
        format!("current URL: {}\npage source (head):\n{head}", url.unwrap_or_else(|e| format!("(unreadable: {e})")))
    }

    /// Saves a PNG of the viewport as `<name>.png` in [`artifacts_dir`]; its path.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.run(&format!("take screenshot {name}"), self.client().screenshot());
        let dir = artifacts_dir();
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create the artifacts dir {}: {e}", dir.display()));
        let path = dir.join(format!("{name}.png"));
        fs::write(&path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// The cookies the browser sends to the current page's origin.
    pub fn cookies(&self) -> Vec<BrowserCookie> {
        self.run("read the cookies", self.client().get_all_cookies())
            .into_iter()
            .map(|c| BrowserCookie {
                name: c.name().to_string(),
                value: c.value().to_string(),
                path: c.path().map(String::from),
                domain: c.domain().map(String::from),
                http_only: c.http_only().unwrap_or(false),
                secure: c.secure().unwrap_or(false),
                same_site: c.same_site().map(|s| s.to_string()),
            })
            .collect()
    }

    /// The cookie `name` of the current page, if the browser holds one.
    pub fn cookie(&self, name: &str) -> Option<BrowserCookie> {
        self.cookies().into_iter().find(|c| c.name == name)
    }

    /// Forgets every cookie of the current page's origin (a logged-out browser).
    pub fn delete_all_cookies(&self) {
        self.run("delete all cookies", self.client().delete_all_cookies());
    }

    /// Sets cookie `name` of the current page's origin to `value`, keeping the path and flags of
    /// the cookie it replaces (path `/` for a new one): e.g. a tampered session cookie.
    pub fn set_cookie(&self, name: &str, value: &str) {
        let existing = self.cookie(name);
        let path = existing.as_ref().and_then(|c| c.path.clone()).unwrap_or_else(|| "/".into());
        // chromedriver refuses a cookie without a domain: the existing one's, else the page's host.
        let domain = match existing.as_ref().and_then(|c| c.domain.clone()) {
            Some(domain) => domain,
            None => {
                let url = self.run("read the current URL", self.client().current_url());
                url.host_str().unwrap_or_else(|| panic!("set cookie {name}: the page {url} has no host")).to_string()
            }
        };
        let mut header = format!("{name}={value}; Path={path}; Domain={domain}");
        if let Some(existing) = &existing {
            if existing.http_only {
                header.push_str("; HttpOnly");
            }
            if existing.secure {
                header.push_str("; Secure");
            }
            if let Some(same_site) = &existing.same_site {
                header.push_str(&format!("; SameSite={same_site}"));
            }
            self.run(&format!("replace cookie {name}"), self.client().delete_cookie(name));
        }
        let cookie = fantoccini::cookies::Cookie::parse(header.clone())
            .unwrap_or_else(|e| panic!("cookie `{header}`: {e}"))
            .into_owned();
        self.run(&format!("set cookie {name}"), self.client().add_cookie(cookie));
    }
}

impl Element<'_> {
    pub fn click(&self) {
        self.browser.run(&format!("click `{}`", self.css), self.inner.click());
    }

    /// Clears the input and types `text`.
    pub fn fill(&self, text: &str) {
        self.browser.run(&format!("clear `{}`", self.css), self.inner.clear());
        self.browser.run(&format!("type into `{}`", self.css), self.inner.send_keys(text));
    }

    pub fn text(&self) -> String {
        self.browser.run(&format!("read the text of `{}`", self.css), self.inner.text())
    }

    /// The attribute `name` (e.g. `value` of an input is [`Element::prop`]).
    pub fn attr(&self, name: &str) -> Option<String> {
        self.browser.run(&format!("read attribute {name} of `{}`", self.css), self.inner.attr(name))
    }

    /// The DOM property `name` (e.g. `value`, `disabled`).
    pub fn prop(&self, name: &str) -> Option<String> {
        self.browser.run(&format!("read property {name} of `{}`", self.css), self.inner.prop(name))
    }

    pub fn is_displayed(&self) -> bool {
        self.browser.run(&format!("read visibility of `{}`", self.css), self.inner.is_displayed())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // Ending the session quits Chromium; bounded, so a hung browser cannot hang the test.
            let _ =
                self.runtime.block_on(async { tokio::time::timeout(Duration::from_secs(10), client.close()).await });
        }
        // The whole process group: chromedriver and any Chromium process still running.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.chromedriver.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.chromedriver.kill();
        let _ = self.chromedriver.wait();
        // Chromium's crash handler leaves the process group; it names this browser's profile dir.
        for pid in processes_naming(self.dir.path()) {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).stderr(Stdio::null()).status();
        }
    }
}

/// Processes whose command line contains `path` (this browser's own temp dir).
fn processes_naming(path: &Path) -> Vec<u32> {
    let needle = path.as_os_str().as_encoded_bytes();
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.windows(needle.len()).any(|w| w == needle))
        })
        .collect()
}

/// Where screenshots go: `$FERRY_ARTIFACTS` when set, else `target/artifacts/console` of the
/// workspace (or of `$CARGO_TARGET_DIR`).
pub fn artifacts_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FERRY_ARTIFACTS") {
        return PathBuf::from(dir);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("artifacts").join("console")
}

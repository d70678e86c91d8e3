//! `ferry serve` against clients that misbehave on purpose: half-open connections that never
//! finish their headers, idle kept-alive connections, bodies trickled a byte at a time — and the
//! separation of the operations API from the webhook listener, and private data files.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::FerryServer;
use support::registry::free_port;

const CONFIG: &str = "[worker]\nenabled = false\n";

fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to ferry serve");
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stream
}

/// Waits until the server closes `stream` (or answers and closes); what it sent, if anything.
fn closed_by_server(mut stream: TcpStream, within: Duration) -> Result<String, String> {
    stream.set_read_timeout(Some(within)).unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => Ok(String::from_utf8_lossy(&answer).into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(String::from_utf8_lossy(&answer).into_owned()),
        Err(e) => Err(format!("still open after {:?} ({e})", started.elapsed())),
    }
}

/// `GET /healthz` on a new connection: its status and how long it took.
fn healthz(port: u16) -> (Option<u16>, Duration) {
    let started = Instant::now();
    (support::serve::get_status(port, "/healthz"), started.elapsed())
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn half_open_and_slow_clients_are_cut_off_and_healthz_keeps_answering() {
    let port = free_port();
    let server = FerryServer::start_with_server_keys(
        port,
        "max_connections = 64\nheader_timeout_secs = 2\nbody_timeout_secs = 3",
        CONFIG,
        &[],
        None,
    );
    // Five times the connection limit of clients that never finish their headers or never ask.
    let mut partial = Vec::new();
    let mut idle = Vec::new();
    for _ in 0..160 {
        let mut stream = connect(port);
        stream.write_all(b"POST /hooks/generic HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ").unwrap();
        partial.push(stream);
        idle.push(connect(port));
    }
    // And some that send their headers, then trickle a body that never completes.
    let mut trickling = Vec::new();
    for _ in 0..16 {
        let mut stream = connect(port);
        stream
            .write_all(b"POST /hooks/generic HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n{")
            .unwrap();
        trickling.push(stream);
    }

    for attempt in 0..20 {
        let (status, took) = healthz(port);
        assert_eq!(
            status,
            Some(200),
            "healthz #{attempt} under attack answered {status:?} after {took:?}\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Ferry closes what the clients leave hanging, within its timeouts (generous bounds here).
    for stream in partial.into_iter().chain(idle).take(40) {
        closed_by_server(stream, Duration::from_secs(15)).expect("a connection without a request was left open");
    }
    for mut stream in trickling {
        let _ = stream.write_all(b" ");
        let answer = closed_by_server(stream, Duration::from_secs(15)).expect("a trickled body was waited on forever");
        assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 4"), "a cut-off body: {answer}");
    }
    let rss = rss_kib(server.pid());
    assert!(rss < 128 * 1024, "ferry serve holds {rss} KiB after the attack");
    assert_eq!(healthz(port).0, Some(200));
}

#[test]
fn operations_listen_apart_from_webhooks_when_api_listen_is_set() {
    let port = free_port();
    let api_port = free_port();
    let token = "hostile-clients-operator-token";
    let server = FerryServer::start_with_server_keys(
        port,
        &format!("api_listen = \"127.0.0.1:{api_port}\""),
        CONFIG,
        &[],
        Some(token),
    );
    let get = |port: u16, path: &str| -> u16 {
        let mut stream = connect(port);
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    assert_eq!(get(port, "/api/status"), 404, "the webhook listener serves operations:\n{}", server.log());
    assert_eq!(get(api_port, "/api/status"), 200, "{}", server.log());
    assert_eq!(get(port, "/healthz"), 200);
}

#[cfg(unix)]
#[test]
fn data_dir_and_databases_are_private_to_their_owner() {
    use std::os::unix::fs::PermissionsExt;
    let server = FerryServer::start(free_port(), CONFIG, &[]);
    let mode = |path: std::path::PathBuf| std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    let data = server.dir().join("data");
    assert_eq!(mode(data.clone()), 0o700, "data_dir");
    for file in ["queue.db", "ledger.db", "replay.db"] {
        assert_eq!(mode(data.join(file)), 0o600, "{file}");
    }
}

//! A bare axum "hello" server: the peer that `bench/intake.sh` measures Ferry's webhook intake
//! against, on the same machine and in the same run.
//!
//! `POST /hooks/generic` → 202 with a small JSON body. The body is read (as Ferry must read it)
//! and ignored: no authentication, no parsing, no queue, no logging. Same axum/hyper/tokio
//! versions and features as `ferry serve`, default multi-threaded runtime (one worker per core).
//!
//! ```sh
//! cargo build --release -p ferry-core --example bare_axum
//! target/release/examples/bare_axum 127.0.0.1:8081
//! ```

use axum::Router;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::json;

#[tokio::main]
async fn main() {
    let listen = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8081".to_owned());
    let listener = match tokio::net::TcpListener::bind(&listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("bare_axum: cannot listen on {listen}: {e}");
            std::process::exit(1);
        }
    };
    let local = listener.local_addr().expect("bound socket has an address");
    eprintln!("bare_axum: listening on http://{local}");
    let app = Router::new().route("/hooks/generic", post(hook));
    if let Err(e) = axum::serve(listener, app).await {
        eprintln!("bare_axum: server failed: {e}");
        std::process::exit(1);
    }
}

/// Reads the body and answers like Ferry's success path would, without doing any of its work.
async fn hook(_body: Bytes) -> (StatusCode, axum::Json<serde_json::Value>) {
    (StatusCode::ACCEPTED, axum::Json(json!({ "status": "queued", "jobs": [] })))
}

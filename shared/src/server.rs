//! How `ferry serve` takes HTTP connections: a bounded number at a time, each with limits on how
//! long a client may take, so that slow or half-open clients cannot exhaust memory, file
//! descriptors or workers, and `/healthz` keeps answering.
//!
//! - **Connections**: at most `max_connections`. At the limit, a new connection takes the place
//!   of the one that has waited longest without sending a request (a slow or idle client), so
//!   that a flood of half-open connections cannot lock out `/healthz` and real senders; when every
//!   connection is busy with a request, the new one is answered `503` and closed at once.
//! - **Headers**: a request's headers must arrive within `header_timeout`. The same timer runs
//!   while a kept-alive connection waits for its next request, so it is also the idle timeout.
//! - **Bodies**: a request body must arrive whole within `body_timeout` (a total deadline, not one
//!   that a client trickling a byte at a time can keep resetting).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use bytes::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};

/// Limits on the clients of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
}

impl Limits {
    pub fn from_config(server: &crate::config::Server) -> Self {
        Limits {
            max_connections: server.max_connections.max(1),
            header_timeout: Duration::from_secs(server.header_timeout_secs.max(1)),
            body_timeout: Duration::from_secs(server.body_timeout_secs.max(1)),
        }
    }
}

/// How long connections still open at shutdown get to finish their request.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What a connection beyond the limit is told before it is closed.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
connection: close\r\ncontent-length: 62\r\n\r\n{\"error\":\"too many connections to Ferry; retry in a moment\"}\r\n";

/// Serves `app` on `listener` within `limits` until `shutdown` completes; then lets requests in
/// flight finish (for up to 10 s).
pub async fn serve(listener: TcpListener, app: Router, limits: Limits, shutdown: impl Future<Output = ()>) {
    let app = app.layer(axum::middleware::map_request(move |request: Request| async move {
        let (parts, body) = request.into_parts();
        Request::from_parts(parts, Body::new(DeadlineBody::new(body, limits.body_timeout)))
    }));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let open = Arc::new(OpenConnections::default());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, typically: back off instead of spinning.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => match open.evict_longest_waiting() {
                Some(evicted) => {
                    tracing::debug!(%peer, "at the connection limit: closed a connection that sent no request");
                    // Its slot comes back as soon as its task drops the connection.
                    match tokio::time::timeout(Duration::from_secs(1), slots.clone().acquire_owned()).await {
                        Ok(Ok(slot)) => slot,
                        _ => {
                            refuse(stream, peer, limits);
                            drop(evicted);
                            continue;
                        }
                    }
                }
                None => {
                    refuse(stream, peer, limits);
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let state = open.add();
        let service = {
            let (app, state) = (app.clone(), state.clone());
            hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                state.waiting.store(false, Ordering::Relaxed);
                let (mut app, state) = (app.clone(), state.clone());
                async move {
                    let response = tower::Service::call(&mut app, request).await;
                    state.waiting.store(true, Ordering::Relaxed);
                    response
                }
            })
        };
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        let open = open.clone();
        tokio::spawn(async move {
            tokio::select! {
                ended = connection => if let Err(e) = ended {
                    tracing::debug!(%peer, error = %e, "connection ended");
                },
                _ = state.evict.notified() => {}
            }
            open.remove(state.seq);
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}: closing them");
    }
}

/// Tells a connection beyond the limit to come back later, and closes it.
fn refuse(mut stream: tokio::net::TcpStream, peer: std::net::SocketAddr, limits: Limits) {
    tracing::warn!(%peer, max = limits.max_connections, "connection refused: every connection is busy");
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(BUSY)).await;
    });
}

/// One open connection, as the accept loop sees it.
struct Connection {
    seq: u64,
    /// No request in progress: waiting for one's headers (a new or a kept-alive connection).
    waiting: AtomicBool,
    evict: Notify,
}

/// The open connections, oldest first.
#[derive(Default)]
struct OpenConnections {
    next: AtomicU64,
    by_age: Mutex<BTreeMap<u64, Arc<Connection>>>,
}

impl OpenConnections {
    fn add(&self) -> Arc<Connection> {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let connection = Arc::new(Connection { seq, waiting: AtomicBool::new(true), evict: Notify::new() });
        self.by_age.lock().expect("connection map poisoned").insert(seq, connection.clone());
        connection
    }

    fn remove(&self, seq: u64) {
        self.by_age.lock().expect("connection map poisoned").remove(&seq);
    }

    /// Tells the oldest connection that is not in a request to close; None if all are busy.
    fn evict_longest_waiting(&self) -> Option<Arc<Connection>> {
        let by_age = self.by_age.lock().expect("connection map poisoned");
        let victim = by_age.values().find(|c| c.waiting.load(Ordering::Relaxed))?.clone();
        // Not waiting any more either way: the next eviction picks another one.
        victim.waiting.store(false, Ordering::Relaxed);
        victim.evict.notify_one();
        Some(victim)
    }
}

/// A request body that must arrive whole before a deadline.
struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
}

impl DeadlineBody {
    fn new(inner: Body, timeout: Duration) -> Self {
        DeadlineBody { inner, deadline: Box::pin(tokio::time::sleep(timeout)), timeout }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
struct BodyTimedOut(Duration);

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut(self.timeout))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

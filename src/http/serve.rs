//! The public port's server loop (SPEC §6 "Limits of the public port"): hyper's HTTP/1
//! connection builder instead of `axum::serve`, for the limits `axum::serve` cannot set.
//!
//! - Request headers must arrive within [`ServeLimits::header_timeout`] (10 s): hyper's
//!   `header_read_timeout` with tokio's timer. hyper starts that clock again as soon
//!   as a keep-alive connection goes idle, so an idle connection is closed by it too,
//!   well inside the 60 s keep-alive bound.
//! - A whole request must arrive within `HTTP_REQUEST_TIMEOUT_SECS`: a middleware
//!   ([`request_deadline`]) answers 408 when the handler, reading the body, finds its
//!   end has not arrived by then. The handler's own work after the body — an agent
//!   call, a stream — is not cut.
//! - At most `HTTP_MAX_CONNECTIONS` connections are served at once: the loop takes a
//!   semaphore permit *before* `accept`, so further clients wait in the kernel's
//!   backlog and hold no file descriptor of ours.
//! - Shutdown: stop accepting, then let hyper finish the requests in flight
//!   (`hyper_util::server::graceful`); dropping the future aborts every connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::error::ApiError;

/// SPEC §6: request headers must arrive within this.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the loop pauses after an `accept` error that is not about one connection
/// (out of file descriptors, say), as `axum::serve` does.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// The limits of the public port.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    pub header_timeout: Duration,
    /// `HTTP_REQUEST_TIMEOUT_SECS`.
    pub request_timeout: Duration,
    /// `HTTP_MAX_CONNECTIONS`.
    pub max_connections: usize,
}

/// Serves `router` on `listener` until `stop` is cancelled, then waits for the
/// requests in flight. Never returns early: `accept` errors are logged and waited out.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    stop: CancellationToken,
) {
    let router = router.layer(middleware::from_fn_with_state(
        limits.request_timeout,
        request_deadline,
    ));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // Owned here: dropping this future (the app's last resort at shutdown) aborts
    // every connection still open.
    let mut connections = JoinSet::new();
    loop {
        // Finished connections are reaped as we go, so the set stays small.
        while connections.try_join_next().is_some() {}
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                // The semaphore is never closed.
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "accepting an HTTP connection failed; pausing");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = router
            .clone()
            .map_request(move |mut req: Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            });
        let conn =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let conn = graceful.watch(conn);
        connections.spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Errors that concern one connection only (the peer gave up during the handshake).
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// Answers 408 when the request has not fully arrived within `limit`. The body keeps
/// the deadline: a handler reading it past the deadline gets an error, and its answer
/// is replaced by the 408. A body that is all there when read (every small request:
/// it comes with its headers) never starts a timer.
async fn request_deadline(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    if http_body::Body::is_end_stream(req.body()) {
        return next.run(req).await;
    }
    let expired = Arc::new(AtomicBool::new(false));
    let (parts, body) = req.into_parts();
    let body = Body::new(Deadline {
        inner: body,
        at: tokio::time::Instant::now() + limit,
        timer: None,
        expired: expired.clone(),
    });
    let response = next.run(Request::from_parts(parts, body)).await;
    match expired.load(Ordering::Acquire) {
        true => timed_out(limit),
        false => response,
    }
}

fn timed_out(limit: Duration) -> Response {
    let mut response = ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        format!(
            "the request did not arrive within {} s",
            limit.as_secs_f64()
        ),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A request body that ends in an error once its deadline passes before its end
/// arrived (and says so in `expired`). The timer starts only when a read has to wait.
struct Deadline {
    inner: Body,
    at: tokio::time::Instant,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    expired: Arc<AtomicBool>,
}

impl http_body::Body for Deadline {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        let at = this.at;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        this.expired.store(true, Ordering::Release);
        Poll::Ready(Some(Err(axum::Error::new(
            "the request body did not arrive in time",
        ))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

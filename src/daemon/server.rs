//! The HTTP endpoint on `metrics.listen`: `GET /metrics` (Prometheus text) and
//! `GET /healthz`. hyper 1 over HTTP/1.1, the stack the AWS SDK already brings.
//!
//! `/healthz` answers 200 while the daemon's main loop is turning (it beats at least
//! once a second) and 503 when it has not for 30 seconds — the same condition the
//! systemd watchdog catches.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::daemon::Shared;

const STALL: Duration = Duration::from_secs(30);

/// Bind `addr`; a failure is a start-up error naming the key.
pub async fn bind(addr: &str) -> anyhow::Result<TcpListener> {
    let sa: SocketAddr = addr
        .parse()
        .map_err(|_| crate::user_error!("key `metrics.listen`: {addr:?} is not address:port"))?;
    if !sa.ip().is_loopback() {
        tracing::warn!(listen = %sa, "metrics.listen is not a loopback address: the metrics endpoint is reachable from the network");
    }
    TcpListener::bind(sa)
        .await
        .with_context(|| format!("listen on {sa} (metrics.listen)"))
}

/// Serve until the task is dropped.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(respond(&req, &shared)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "metrics endpoint: connection ended");
            }
        });
    }
}

fn respond(req: &Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, ctype: &'static str, body: String| {
        Response::builder()
            .status(status)
            .header(hyper::header::CONTENT_TYPE, ctype)
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts are valid")
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            shared.render_metrics(),
        ),
        "/healthz" => {
            let since = shared.since_heartbeat();
            if since < STALL {
                reply(StatusCode::OK, "text/plain", "ok\n".into())
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!(
                        "the daemon's main loop has not run for {}s\n",
                        since.as_secs()
                    ),
                )
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics or /healthz\n".into(),
        ),
    }
}

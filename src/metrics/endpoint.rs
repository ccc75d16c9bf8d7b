//! `GET /metrics` over plain HTTP/1.1 (hyper, already a dependency of
//! tonic): a separate listener so scrapers need neither gRPC nor the token.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Renders the exposition now; None until the event log is replayed (the
/// registry lives in the service's core, which exists only then). The
/// server fills it, so this endpoint needs neither the API nor the core.
pub type Exposition = std::sync::Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// Content type of the text exposition format.
pub const CONTENT_TYPE_0_0_4: &str = "text/plain; version=0.0.4; charset=utf-8";

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(CONTENT_TYPE, v);
    }
    r
}

fn handle(render: &Exposition, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; metrics are at /metrics\n".into(),
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use GET\n".into(),
        );
        r.headers_mut()
            .insert(ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match render() {
        Some(text) => reply(StatusCode::OK, CONTENT_TYPE_0_0_4, text),
        // Until the log is replayed say so, as health does.
        None => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "the event log is being replayed\n".into(),
        ),
    }
}

/// Serves until `closing` turns true. Connection errors are logged and
/// end that connection only.
pub async fn serve(
    listener: TcpListener,
    render: Exposition,
    mut closing: tokio::sync::watch::Receiver<bool>,
) {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = closing.wait_for(|c| *c) => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // E.g. out of file descriptors: back off instead of spinning.
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let render = render.clone();
        let mut closing = closing.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let resp = handle(&render, &req);
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "metrics connection ended with an error");
                    }
                }
                _ = closing.wait_for(|c| *c) => {}
            }
        });
    }
    tracing::debug!(addr = ?addr, "metrics endpoint stopped");
}

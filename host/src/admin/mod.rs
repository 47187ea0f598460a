//! The admin listener (`[admin] bind`): `/metrics`, `/healthz`, `/readyz`,
//! and a JSON API over pools, backends and policies. It is never served on
//! a proxy listener, and without an `[admin]` section it does not exist.

pub mod access_log;
pub mod metrics;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tracing::{debug, info, warn};

pub use access_log::AccessLog;
pub use metrics::Metrics;

use crate::balance::Candidate;
use crate::server::View;

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

fn json_reply(status: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    reply(status, "application/json", format!("{v}\n"))
}

fn pool_json(name: &str, pool: &crate::upstream::Pool) -> Value {
    json!({
        "name": name,
        "algorithm": format!("{:?}", pool.config.algorithm),
        "backends": pool.backends.iter().map(|b| json!({
            "name": &*b.name,
            "address": b.address().map(|a| a.authority.clone()),
            "configured": b.configured.to_string(),
            "weight": b.weight,
            "available": b.available(),
            "checks_pass": b.health.checks_pass(),
            "ejected": b.health.ejected(&b.name),
            "drained": b.drained(),
            "in_flight": b.in_flight(),
            "total": b.total(),
        })).collect::<Vec<_>>(),
    })
}

fn route(req: &Request<Incoming>, view: &View, metrics: &Metrics) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method(), segments.as_slice()) {
        (&Method::GET, ["healthz"]) => reply(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET, ["readyz"]) => {
            if view.ready {
                reply(StatusCode::OK, "text/plain", "ready\n")
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "starting\n")
            }
        }
        (&Method::GET, ["metrics"]) => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render(&view.upstreams),
        ),
        (&Method::GET, ["api", "pools"]) => json_reply(
            StatusCode::OK,
            &Value::Array(view.upstreams.pools().map(|(n, p)| pool_json(n, p)).collect()),
        ),
        (&Method::GET, ["api", "pools", name]) => match view.upstreams.pool(name) {
            Some(p) => json_reply(StatusCode::OK, &pool_json(name, p)),
            None => json_reply(StatusCode::NOT_FOUND, &json!({"error": format!("no pool named {name:?}")})),
        },
        (&Method::POST, ["api", "pools", name, "backends", backend, action @ ("drain" | "undrain")]) => {
            let Some(p) = view.upstreams.pool(name) else {
                return json_reply(StatusCode::NOT_FOUND, &json!({"error": format!("no pool named {name:?}")}));
            };
            let found = p.backends.iter().find(|b| {
                *b.name == **backend || b.address().is_some_and(|a| a.authority == *backend)
            });
            match found {
                Some(b) => {
                    b.set_drained(*action == "drain");
                    info!(pool = %name, backend = %b.name, action = %action, "admin");
                    json_reply(StatusCode::OK, &json!({"pool": name, "backend": &*b.name, "drained": b.drained()}))
                }
                None => json_reply(
                    StatusCode::NOT_FOUND,
                    &json!({"error": format!("pool {name:?} has no backend {backend:?}")}),
                ),
            }
        }
        (&Method::GET, ["api", "policies"]) => json_reply(
            StatusCode::OK,
            &Value::Array(
                view.policies
                    .iter()
                    .map(|p| {
                        let s = &p.stats;
                        json!({
                            "name": &*p.name,
                            "world": p.kind.world(),
                            "version": p.version,
                            "file": p.file.display().to_string(),
                            "loaded_at_unix": p.loaded_at.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                            "compiled_from_cache": p.from_cache,
                            "calls": s.calls.load(std::sync::atomic::Ordering::Relaxed),
                            "errors": s.errors.load(std::sync::atomic::Ordering::Relaxed),
                            "last_call_error": s.last_error.lock().ok().and_then(|e| e.clone()),
                            "last_refused": view.policy_errors.get(&*p.name),
                            "p50_us_at_most": s.quantile(0.5).map(|d| d.as_secs_f64() * 1e6),
                            "p99_us_at_most": s.quantile(0.99).map(|d| d.as_secs_f64() * 1e6),
                        })
                    })
                    .collect(),
            ),
        ),
        _ => json_reply(StatusCode::NOT_FOUND, &json!({"error": "not found"})),
    }
}

/// Serves the admin API on `bind` until the process ends.
pub async fn serve(
    bind: SocketAddr,
    view: Arc<ArcSwap<View>>,
    metrics: Arc<Metrics>,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    info!(%addr, "admin listening");
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    continue;
                }
            };
            let (view, metrics) = (view.clone(), metrics.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let r = route(&req, &view.load(), &metrics);
                    async move { Ok::<_, Infallible>(r) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await
                {
                    debug!(%peer, error = %e, "admin connection error");
                }
            });
        }
    });
    Ok(addr)
}

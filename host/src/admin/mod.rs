//! The admin listener (`[admin] bind`): `/metrics`, `/healthz`, `/readyz`,
//! and a JSON API over pools, backends and policies. It is never served on
//! a proxy listener, and without an `[admin]` section it does not exist.
//!
//! Every request must name the listener in `Host` (or a name of `[admin]
//! hosts`), which defeats DNS rebinding. With `token_file`, every endpoint
//! but `/healthz` and `/readyz` needs `Authorization: Bearer`. A request
//! that changes state must also be same-origin and say it sends JSON, so a
//! web page the operator opens cannot drain a backend with a no-cors POST.

pub mod access_log;
mod actions;
pub mod metrics;
pub mod reloads;
pub mod request_metrics;
mod sharded;
pub mod status;

use std::collections::BTreeMap;
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
use crate::config::AdminConfig;
use crate::policy::{Policy, PolicyEngine};
use crate::upstream::Upstreams;

/// What the admin API (and tests) read without taking the daemon's
/// lock; the daemon publishes a new one whenever its state changes.
#[derive(Default)]
pub struct View {
    pub addrs: BTreeMap<String, SocketAddr>,
    /// Each listener's protocol: `http`, `https`, `tcp`, `tls` (SNI
    /// routing) or `udp`.
    pub protocols: BTreeMap<String, String>,
    pub upstreams: Arc<Upstreams>,
    /// Loaded policy versions by listener.
    pub policy_versions: BTreeMap<String, String>,
    /// Why the newest version of a policy (by name) was refused, if it was.
    pub policy_errors: BTreeMap<String, String>,
    /// Policies whose file is gone (the last version keeps serving).
    pub policies_missing: std::collections::BTreeSet<String>,
    /// Compilations answered from / missing in the on-disk cache.
    pub cache_hits: usize,
    pub cache_misses: usize,
    /// Every policy version in use.
    pub policies: Vec<Arc<Policy>>,
    /// Canaries running, by policy name.
    pub canaries: BTreeMap<String, Arc<crate::policy::rollout::Canary>>,
    /// The policy engine, for its pool's gauges.
    pub engine: Option<Arc<PolicyEngine>>,
    /// Every listener bound and every policy loaded.
    pub ready: bool,
}

/// Time to read a request head, and the keep-alive idle time between two.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// The longest an admin connection may live.
const CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(60);
/// Admin connections served at once; past it new ones wait in the backlog.
const MAX_CONNECTIONS: usize = 64;

/// Whether `host` (a `Host` header, or an `Origin` without its scheme)
/// names this listener: its address as the client connected to it or
/// `localhost` on a loopback listener, each with the listener's port (no
/// port means 80, as HTTP says), or one of `[admin] hosts` (with any
/// port: such a name is usually a reverse proxy's).
fn host_allowed(host: &str, local: SocketAddr, names: &[String]) -> bool {
    // An authority may carry userinfo; a Host or Origin may not.
    if host.contains('@') {
        return false;
    }
    let Ok(auth) = host.parse::<http::uri::Authority>() else {
        return false;
    };
    let name = auth
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    if names.contains(&name) {
        return true;
    }
    if auth.port_u16().unwrap_or(80) != local.port() {
        return false;
    }
    // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d.
    let ip = local.ip().to_canonical();
    name.parse::<std::net::IpAddr>()
        .is_ok_and(|n| n.to_canonical() == ip)
        || (name == "localhost" && ip.is_loopback())
}

/// The admin API's checks before routing: `Host`, the token, and for a
/// request that changes state, same-origin and JSON.
fn refusal(
    req: &Request<Incoming>,
    cfg: &AdminConfig,
    local: SocketAddr,
) -> Option<Response<Full<Bytes>>> {
    let header = |n: header::HeaderName| req.headers().get(n).and_then(|v| v.to_str().ok());
    let refuse = |status: StatusCode, why: &str| Some(json_reply(status, &json!({"error": why})));
    let host = header(header::HOST).unwrap_or("");
    if !host_allowed(host, local, &cfg.hosts) {
        return refuse(
            StatusCode::MISDIRECTED_REQUEST,
            "Host does not name this admin listener (add the name to [admin] hosts)",
        );
    }
    let path = req.uri().path();
    // The page and its script hold no data: the browser cannot send a
    // token on navigation, and the script asks for one to read the API.
    if let Some(token) = &cfg.token
        && !matches!(
            path,
            "/healthz" | "/readyz" | "/" | "/status.js" | "/status.css"
        )
    {
        use sha2::{Digest, Sha256};
        let given = header(header::AUTHORIZATION)
            .and_then(|a| a.strip_prefix("Bearer "))
            .unwrap_or("");
        // Digests compared, so the comparison's time says nothing of the token.
        if Sha256::digest(given.trim()) != Sha256::digest(&**token) {
            let mut r = json_reply(
                StatusCode::UNAUTHORIZED,
                &json!({"error": "a bearer token is required"}),
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return Some(r);
        }
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let origin_ok = match header(header::ORIGIN) {
            None => true,
            Some(o) => o
                .strip_prefix("http://")
                .is_some_and(|h| host_allowed(h, local, &cfg.hosts)),
        };
        let site_ok = header(http::header::HeaderName::from_static("sec-fetch-site"))
            .is_none_or(|s| s == "same-origin");
        if !origin_ok || !site_ok {
            return refuse(
                StatusCode::FORBIDDEN,
                "a cross-site request may not change state",
            );
        }
        let json = header(header::CONTENT_TYPE).is_some_and(|c| {
            c.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
        if !json {
            return refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "a request that changes state must be sent as Content-Type: application/json",
            );
        }
    }
    None
}

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
    // No browser reads an API answer (which may echo a name) as a page.
    r.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
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
            "address": b.address().authority.clone(),
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

/// One of the status page's files, which no other site may frame (a
/// framed drain button is clickjacking) and which runs only its own script.
fn page(content_type: &'static str, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = reply(StatusCode::OK, content_type, body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; \
             connect-src 'self'; img-src 'self'; frame-ancestors 'none'; \
             base-uri 'none'; form-action 'none'",
        ),
    );
    h.insert(
        header::X_FRAME_OPTIONS,
        header::HeaderValue::from_static("DENY"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

fn policies_json(view: &View) -> Value {
    Value::Array(
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
                    "calls": s.calls(),
                    "errors": s.errors.load(std::sync::atomic::Ordering::Relaxed),
                    "overloaded": s.overloaded.load(std::sync::atomic::Ordering::Relaxed),
                    "instances": p.live_instances(),
                    "last_call_error": s.last_error.lock().ok().and_then(|e| e.clone()),
                    "last_refused": view.policy_errors.get(&*p.name),
                    "p50_us_at_most": s.quantile(0.5).map(|d| d.as_secs_f64() * 1e6),
                    "p99_us_at_most": s.quantile(0.99).map(|d| d.as_secs_f64() * 1e6),
                    "canary": view.canaries.get(&*p.name).map(|c| c.json()),
                })
            })
            .collect(),
    )
}

fn route(
    req: &Request<Incoming>,
    view: &View,
    metrics: &Metrics,
    sampled: &status::Status,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    // Percent-decoded, so a backend named `[::1]:80` can be drained.
    let decoded: Vec<std::borrow::Cow<str>> = path
        .trim_matches('/')
        .split('/')
        .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy())
        .collect();
    let segments: Vec<&str> = decoded.iter().map(|s| &**s).collect();
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
            status::render(view, metrics),
        ),
        (&Method::GET, [""]) => page("text/html; charset=utf-8", status::HTML),
        (&Method::GET, ["status.js"]) => page("text/javascript; charset=utf-8", status::JS),
        (&Method::GET, ["status.css"]) => page("text/css; charset=utf-8", status::CSS),
        (&Method::GET, ["api", "status"]) => {
            json_reply(StatusCode::OK, &sampled.snapshot(view, metrics))
        }
        (&Method::GET, ["api", "pools"]) => json_reply(
            StatusCode::OK,
            &Value::Array(
                view.upstreams
                    .pools()
                    .map(|(n, p)| pool_json(n, p))
                    .collect(),
            ),
        ),
        (&Method::GET, ["api", "pools", name]) => match view.upstreams.pool(name) {
            Some(p) => json_reply(StatusCode::OK, &pool_json(name, p)),
            None => json_reply(
                StatusCode::NOT_FOUND,
                &json!({"error": format!("no pool named {name:?}")}),
            ),
        },
        (
            &Method::POST,
            [
                "api",
                "pools",
                name,
                "backends",
                backend,
                action @ ("drain" | "undrain"),
            ],
        ) => actions::drain(view, name, backend, action),
        (&Method::GET, ["api", "policies"]) => json_reply(StatusCode::OK, &policies_json(view)),
        (&Method::GET, ["api", "policies", name, "diff"]) => actions::shadow_diff(view, name),
        (&Method::POST, ["api", "policies", name, action @ ("promote" | "rollback")]) => {
            actions::end_canary(view, name, action)
        }
        _ => json_reply(StatusCode::NOT_FOUND, &json!({"error": "not found"})),
    }
}

/// Serves the admin API on `cfg.bind` until the process ends.
pub async fn serve(
    cfg: AdminConfig,
    view: Arc<ArcSwap<View>>,
    metrics: Arc<Metrics>,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(cfg.bind).await?;
    let addr = listener.local_addr()?;
    info!(%addr, token = cfg.token.is_some(), "admin listening");
    if !addr.ip().is_loopback() && cfg.token.is_none() {
        warn!(%addr, "the admin API listens beyond loopback without [admin] token_file: \
            anyone who can reach it can drain backends");
    }
    let cfg = Arc::new(cfg);
    let sampled = Arc::new(status::Status::default());
    let sampler = (sampled.clone(), view.clone(), metrics.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(status::INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            sampler.0.sample(&sampler.1.load(), &sampler.2);
        }
    });
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    crate::warn_limited!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let local = stream.local_addr().unwrap_or(addr);
            let (view, metrics, cfg) = (view.clone(), metrics.clone(), cfg.clone());
            let sampled = sampled.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let svc = service_fn(move |req| {
                    let r = refusal(&req, &cfg, local)
                        .unwrap_or_else(|| route(&req, &view.load(), &metrics, &sampled));
                    async move { Ok::<_, Infallible>(r) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), svc);
                match tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                    Ok(Err(e)) => debug!(%peer, error = %e, "admin connection error"),
                    Err(_) => debug!(%peer, "admin connection closed at its lifetime"),
                    Ok(Ok(())) => {}
                }
            });
        }
    });
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::host_allowed;

    #[test]
    fn only_names_of_this_listener_pass_as_host_or_origin() {
        let local = "127.0.0.1:9901".parse().unwrap();
        let names = vec!["admin.example".to_owned()];
        for ok in [
            "127.0.0.1:9901",
            "localhost:9901",
            "LOCALHOST:9901",
            "admin.example",
            "admin.example:443",
        ] {
            assert!(host_allowed(ok, local, &names), "{ok}");
        }
        for bad in [
            "",
            "evil.example:9901",
            "127.0.0.1",
            "localhost",
            "127.0.0.2:9901",
            "127.0.0.1:9902",
            "localhost.:9901",
            "user@127.0.0.1:9901",
            "null",
        ] {
            assert!(!host_allowed(bad, local, &names), "{bad}");
        }
        // A dual-stack listener sees an IPv4 client's address mapped.
        let mapped = "[::ffff:127.0.0.1]:9901".parse().unwrap();
        assert!(host_allowed("127.0.0.1:9901", mapped, &[]));
        assert!(host_allowed("localhost:9901", mapped, &[]));
        let v6 = "[::1]:9901".parse().unwrap();
        assert!(host_allowed("[::1]:9901", v6, &[]));
        assert!(!host_allowed("[::2]:9901", v6, &[]));
    }
}

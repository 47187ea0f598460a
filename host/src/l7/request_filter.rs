//! Phase 1, `request_filter`: what the request must pass before anything
//! is chosen for it. Its framing and target (`framing.rs`), its path
//! (`path.rs`), its declared body size, the client's address, the
//! domain-fronting check ([`checks`]), then the policy's `on-request`
//! ([`on_request`]); [`decided`] turns the decision into what goes on. A
//! `respond` decision ends the request here. Only the policy call is
//! async: a request without a policy builds no future for it.

use std::borrow::Cow;
use std::net::SocketAddr;

use http::{HeaderValue, Request, Response, header};

use super::context::Ctx;
use super::error::ProxyError;
use super::server::{Conn, HttpState, ProxyBody, full};
use super::{hygiene, path, request};
use crate::config::OnError;
use crate::policy::{DirectResponse, ForwardAction, HttpDecision, PolicyError, RequestView};

/// What the request filter lets through.
pub(super) enum Filtered {
    /// Answered here (the policy's `respond`).
    Respond(Response<ProxyBody>),
    /// On to a backend, as the policy (or the listener's default) says.
    Forward(ForwardAction),
}

/// The decision, as the request filter lets it through: the policy's
/// (from [`on_request`]), or the listener's default without a policy.
pub(super) fn decided(decision: HttpDecision, state: &HttpState) -> Result<Filtered, ProxyError> {
    match decision {
        HttpDecision::Respond(r) => Ok(Filtered::Respond(direct(r))),
        HttpDecision::Forward(f) => Ok(Filtered::Forward(normalize_rewrite(f, state)?)),
        // The body phase turns it into one of the above.
        HttpDecision::ReadBody(_) => Err(ProxyError::PolicyRejected(PolicyError::InvalidDecision(
            "read-body after the body was read".into(),
        ))),
    }
}

/// A response the policy wrote: a `respond` decision, or the response
/// hook's replacement.
pub(super) fn direct(r: DirectResponse) -> Response<ProxyBody> {
    let mut resp = Response::new(full(r.body));
    *resp.status_mut() = r.status;
    for (n, v) in r.headers {
        resp.headers_mut().append(n, v);
    }
    resp
}

/// The checks before the policy, and what they settle about the client.
pub(super) fn checks<B>(
    req: &mut Request<B>,
    conn: &Conn,
    state: &HttpState,
    ctx: &mut Ctx,
) -> Result<(), ProxyError> {
    let cfg = &state.config;
    let peer = conn.peer;
    super::framing::check_request(req.version(), req.uri(), req.headers(), cfg.max_uri_bytes)
        .map_err(ProxyError::Refused)?;
    if cfg.normalize_path {
        let normal = path::normalize(req.uri().path(), cfg.path_with_escaped_slashes)
            .map_err(ProxyError::BadPath)?;
        if let Cow::Owned(p) = normal {
            let uri = with_path(req.uri(), &p)
                .map_err(|_| ProxyError::BadPath(path::PathError::BadEscape))?;
            *req.uri_mut() = uri;
        }
    }
    if let Some(limit) = cfg.max_request_body_bytes {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(ProxyError::BodyTooLarge { limit });
        }
    }
    let peer_ip = peer.ip().to_canonical();
    let client_ip = hygiene::client_ip(peer_ip, req.headers(), &cfg.trusted_proxies);
    ctx.client = SocketAddr::new(client_ip, peer.port());
    ctx.trusted_peer = cfg.trusted_proxies.iter().any(|n| n.contains(&peer_ip));
    if cfg.request_ids {
        let (id, trace) = super::trace::stamp(req.headers_mut(), ctx.trusted_peer);
        if let Some(a) = ctx.agent.as_mut() {
            let text = |v: HeaderValue| Some(String::from_utf8_lossy(v.as_bytes()).into_owned());
            a[2] = text(id);
            a[3] = text(trace);
        }
    }
    // The authority the client named (`:authority`/absolute form, else
    // `Host`), as it sent it; a Host that is not visible ASCII counts as
    // none, for the policy, the TLS Host check and the backend alike.
    ctx.client_host = request::authority(req.uri(), req.headers());
    // Domain-fronting guard: a TLS connection made for one name carries
    // requests for that name only.
    if let (Some(tls), Some(terminator)) = (&conn.tls, &state.tls)
        && terminator.settings.check_host
        && let (Some(sni), Some(host)) = (
            &tls.sni,
            ctx.client_host.as_ref().and_then(|v| v.to_str().ok()),
        )
        && !request::host_matches(host, sni)
    {
        return Err(ProxyError::Misdirected {
            sni: sni.clone(),
            host: host.to_owned(),
        });
    }
    Ok(())
}

/// The policy decides, on the request as the client sent it. Its head is
/// lent to the call and comes back after it; a copy is kept only for a
/// later hook. A failed call follows `on_error`.
pub(super) async fn on_request<B>(
    req: &mut Request<B>,
    conn: &Conn,
    state: &HttpState,
    ctx: &mut Ctx,
) -> Result<HttpDecision, ProxyError> {
    let Some(policy) = &state.policy else {
        return Ok(HttpDecision::Forward(ForwardAction::default()));
    };
    let mut view = lend(req, conn, ctx);
    let info = conn.policy_view(ctx.client, state);
    // A shadow decides the request as this version got it.
    let before = match state.rollout.as_deref() {
        Some(r) if r.run.shadow.is_some() => Some(view.clone()),
        _ => None,
    };
    let directory = ctx.directory.get_or_insert_with(|| state.directory());
    let (d, took) = policy
        .on_request_timed(&mut view, &info, state.config.pool.as_deref(), directory)
        .await;
    if let (Some(before), Ok(live)) = (before, &d) {
        ctx.shadow = Some(Box::new(super::context::ShadowCall {
            view: before,
            live: live.clone(),
            info: info.clone(),
        }));
    }
    settle(d, took, &mut view, req, state, ctx)
}

/// The request head lent to a policy call.
pub(super) fn lend<B>(req: &mut Request<B>, conn: &Conn, ctx: &Ctx) -> Box<RequestView> {
    Box::new(RequestView {
        method: req.method().clone(),
        uri: std::mem::take(req.uri_mut()),
        version: req.version(),
        headers: std::mem::take(req.headers_mut()),
        scheme: conn.scheme(),
        authority: ctx.client_host.clone(),
    })
}

/// After a request or body hook: the call counted, the head given back
/// (a copy kept when a later hook reads it), the decision labelled for
/// the log, and a failure handled as `on_error` says.
pub(super) fn settle<B>(
    d: Result<HttpDecision, PolicyError>,
    took: std::time::Duration,
    view: &mut RequestView,
    req: &mut Request<B>,
    state: &HttpState,
    ctx: &mut Ctx,
) -> Result<HttpDecision, ProxyError> {
    let cfg = &state.config;
    let Some(policy) = &state.policy else {
        return d.map_err(ProxyError::PolicyRejected);
    };
    state.metrics.record_policy_call(
        &policy.name,
        state.policy_metrics.as_ref(),
        took,
        d.as_ref().err(),
    );
    let later = match &d {
        Ok(HttpDecision::Forward(f)) => {
            if policy.has_log_hook() {
                ctx.context = f.context.clone();
            }
            f.inspect_response
        }
        Ok(HttpDecision::ReadBody(_)) => true,
        _ => false,
    };
    if policy.has_log_hook() || later {
        ctx.log_hook = policy.has_log_hook();
        ctx.snapshot = Some(Box::new(view.clone()));
    }
    *req.uri_mut() = std::mem::take(&mut view.uri);
    *req.headers_mut() = std::mem::take(&mut view.headers);
    match d {
        Ok(d) => {
            ctx.decision = match d {
                HttpDecision::Forward(_) => "forward",
                HttpDecision::Respond(_) => "respond",
                HttpDecision::ReadBody(_) => "read_body",
            };
            Ok(d)
        }
        Err(e) => {
            ctx.decision = match cfg.on_error {
                OnError::Fallback => "fallback",
                OnError::Reject => "reject",
            };
            crate::warn_limited!(listener = %state.name, policy = %policy.name, version = %policy.version,
                error = %e, on_error = ?cfg.on_error, "policy call failed");
            match cfg.on_error {
                OnError::Fallback => Ok(HttpDecision::Forward(ForwardAction::default())),
                OnError::Reject => Err(ProxyError::PolicyRejected(e)),
            }
        }
    }
}

/// A path the policy rewrote is normalized like the client's.
fn normalize_rewrite(
    mut action: ForwardAction,
    state: &HttpState,
) -> Result<ForwardAction, ProxyError> {
    let cfg = &state.config;
    if cfg.normalize_path
        && let Some(p) = &action.path
        && let Cow::Owned(normal) = path::normalize(p.path(), cfg.path_with_escaped_slashes)
            .map_err(ProxyError::BadRewrite)?
    {
        let with_query = match p.query() {
            Some(q) => format!("{normal}?{q}"),
            None => normal,
        };
        action.path = Some(
            http::uri::PathAndQuery::try_from(with_query)
                .map_err(|_| ProxyError::BadRewrite(path::PathError::BadEscape))?,
        );
    }
    Ok(action)
}

/// `uri` with its path replaced by `path` (already normalized), the
/// query kept.
fn with_path(uri: &http::Uri, path: &str) -> Result<http::Uri, http::Error> {
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(http::uri::PathAndQuery::try_from(pq)?);
    Ok(http::Uri::from_parts(parts)?)
}

//! One request through a loaded HTTP policy offline, every hook it asks
//! for: `on-request`; `on-request-body` with the given body when the
//! decision is `read-body` (or the over-limit branch when the body is
//! longer); `on-response` with the given response when the final decision
//! inspects it. What `policy test` prints, one run or one case.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use crate::policy::bindings::http_client::{CallError, IncomingResponse, OutgoingRequest};
use crate::policy::directory::CallFuture;
use crate::policy::{
    ConnectionInfo, Directory, HttpDecision, OverLimit, Policy, RequestView, ResponseView, types,
};

/// A response for the response hook (or a canned `http-call` answer).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GivenResponse {
    pub status: u16,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    #[serde(default)]
    pub body: String,
}

/// The request head a run sends: `host: localhost` unless the headers
/// name one.
pub fn request(
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Box<RequestView>> {
    let mut headers = headers.to_vec();
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        headers.insert(0, ("host", "localhost"));
    }
    RequestView::build(method, target, &headers)
        .with_context(|| format!("not a valid request: {method} {target}"))
}

/// The connection a run comes in on: from `client`, to the listener's
/// `pool`, over TLS with `sni` when given (a connection policy's input).
pub fn connection(
    client: &str,
    pool: Option<&str>,
    sni: Option<&str>,
) -> anyhow::Result<Arc<ConnectionInfo>> {
    let ip: std::net::IpAddr = client
        .parse()
        .with_context(|| format!("the client {client:?} is not an IP address"))?;
    let mut conn = ConnectionInfo::new(
        std::net::SocketAddr::new(ip, 40000),
        "127.0.0.1:8080".parse().expect("an address"),
        "policy-test",
        pool,
        types::Transport::Tcp,
    );
    conn.tls = sni.map(|sni| types::TlsInfo {
        sni: Some(sni.to_ascii_lowercase()),
        alpn: None,
        version: None,
        client_subject: None,
    });
    Ok(Arc::new(conn))
}

/// What one run sends through the policy besides the request head.
#[derive(Default)]
pub struct Extras {
    /// The request body, for `on-request-body`.
    pub body: Option<Bytes>,
    /// The upstream response, for `on-response`.
    pub response: Option<GivenResponse>,
}

fn header_map(headers: &[(String, String)]) -> anyhow::Result<HeaderMap> {
    let mut map = HeaderMap::new();
    for (n, v) in headers {
        map.append(
            http::header::HeaderName::from_bytes(n.as_bytes())
                .with_context(|| format!("{n:?} is not a header name"))?,
            http::HeaderValue::from_str(v)
                .with_context(|| format!("the value of {n:?} is not a header value"))?,
        );
    }
    Ok(map)
}

/// Runs the request through the policy's hooks; returns the decision as
/// `policy test` prints it: the final decision's JSON, with `read_body`
/// when the body was asked for and `on_response` when the response hook
/// ran.
pub async fn run(
    policy: &Policy,
    request: &mut Box<RequestView>,
    conn: &Arc<ConnectionInfo>,
    pool: Option<&str>,
    directory: &Arc<dyn Directory>,
    extras: &Extras,
) -> anyhow::Result<Value> {
    let mut decision = policy.on_request(request, conn, pool, directory).await?;
    let mut read = None;
    if let HttpDecision::ReadBody(r) = decision {
        let body = extras.body.clone().unwrap_or_default();
        read = Some(json!({"limit": r.limit}));
        decision = if body.len() as u64 > u64::from(r.limit) {
            match r.over_limit {
                OverLimit::Refuse => return Ok(json!({"refuse": 413, "read_body": read})),
                OverLimit::Forward(f) => HttpDecision::Forward(*f),
            }
        } else {
            let (d, _) = policy
                .on_request_body(request, &body, r.context.as_deref(), pool, directory)
                .await;
            d?
        };
    }
    let mut out = decision.to_json();
    if let Some(read) = read {
        out["read_body"] = read;
    }
    if let (HttpDecision::Forward(f), Some(given)) = (&decision, &extras.response)
        && f.inspect_response
    {
        let mut view = Box::new(ResponseView {
            status: StatusCode::from_u16(given.status)
                .with_context(|| format!("response status {} is not a status", given.status))?,
            headers: header_map(&given.headers)?,
        });
        let body = match f.response_body_limit {
            None => types::ResponseBody::NotRead,
            Some(n) if given.body.len() as u64 > u64::from(n) => types::ResponseBody::OverLimit,
            Some(_) => types::ResponseBody::Read(given.body.clone().into_bytes()),
        };
        let action = policy
            .on_response(request, &mut view, &body, f.context.as_deref(), directory)
            .await?;
        out["on_response"] = action.to_json();
    }
    Ok(out)
}

/// The pools as a directory sees them, with canned answers for the
/// policy's `http-call`s (a case's `calls`): no network offline.
pub struct CannedCalls {
    pub inner: Arc<dyn Directory>,
    pub calls: BTreeMap<String, GivenResponse>,
}

impl Directory for CannedCalls {
    fn backends(&self, pool: &str) -> Option<Vec<types::Backend>> {
        self.inner.backends(pool)
    }

    fn check(&self, pool: &str, backend: Option<&str>) -> Result<(), String> {
        self.inner.check(pool, backend)
    }

    fn http_call(&self, pool: &str, _request: OutgoingRequest) -> CallFuture {
        let answer = match self.calls.get(pool) {
            Some(r) => Ok(IncomingResponse {
                status: r.status,
                headers: r
                    .headers
                    .iter()
                    .map(|(name, value)| types::Header {
                        name: name.clone(),
                        value: value.clone(),
                    })
                    .collect(),
                body: r.body.clone().into_bytes(),
            }),
            None => Err(CallError::NotAllowed(format!(
                "no canned answer for pool {pool:?} (a case's \"calls\")"
            ))),
        };
        Box::pin(std::future::ready(answer))
    }
}

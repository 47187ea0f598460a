//! Turns what a guest returned into a decision the proxy can apply, or an
//! `InvalidDecision` error. Nothing a guest returns reaches the wire without
//! passing through here: header names and values must be valid HTTP, and
//! hop-by-hop and framing headers are the host's alone.

use bytes::Bytes;
use http::StatusCode;
use http::header::{HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use serde_json::{Value, json};

use super::bindings::types;
use super::directory::Directory;

/// A header change, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderEdit {
    Set(HeaderName, HeaderValue),
    Append(HeaderName, HeaderValue),
    Remove(HeaderName),
}

impl HeaderEdit {
    /// Applies the edit to a header map.
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        match self {
            HeaderEdit::Set(n, v) => {
                headers.insert(n.clone(), v.clone());
            }
            HeaderEdit::Append(n, v) => {
                headers.append(n.clone(), v.clone());
            }
            HeaderEdit::Remove(n) => {
                headers.remove(n);
            }
        }
    }

    fn to_json(&self) -> Value {
        let text = |v: &HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned();
        match self {
            HeaderEdit::Set(n, v) => json!({"set": [n.as_str(), text(v)]}),
            HeaderEdit::Append(n, v) => json!({"append": [n.as_str(), text(v)]}),
            HeaderEdit::Remove(n) => json!({"remove": n.as_str()}),
        }
    }
}

/// Forward the request upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardAction {
    /// `None`: the listener's default pool.
    pub pool: Option<String>,
    /// `None`: the pool's algorithm picks.
    pub backend: Option<String>,
    /// Replacement path (and query, when it has one).
    pub path: Option<PathAndQuery>,
    pub authority: Option<Authority>,
    pub request_headers: Vec<HeaderEdit>,
    pub response_headers: Vec<HeaderEdit>,
    pub inspect_response: bool,
    /// Handed to the request's later hooks (at most [`MAX_CONTEXT_BYTES`]).
    pub context: Option<Vec<u8>>,
    /// The request body to send instead of the client's (boxed: a
    /// forward decision is moved along the request path, and this is
    /// rare).
    pub body: Option<Box<Bytes>>,
    /// With `inspect_response`: read this much of the upstream body for
    /// the response hook (before the listener's cap).
    pub response_body_limit: Option<u32>,
}

/// Read the request body, then ask the body hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadBody {
    /// Bytes the policy asked for (before the listener's cap).
    pub limit: u32,
    pub over_limit: OverLimit,
    pub context: Option<Vec<u8>>,
}

/// The policy's branch for a body over its limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverLimit {
    /// 413.
    Refuse,
    /// Forward as this says, the body streamed through unread.
    Forward(Box<ForwardAction>),
}

/// Which optional hooks a decision may lean on: what the policy exports,
/// and the phase the decision comes from.
#[derive(Debug, Clone, Copy, Default)]
pub struct Allowed {
    /// `read-body`: only from `on-request`, when the policy exports the
    /// body hook.
    pub read_body: bool,
    /// `inspect-response`: when the policy exports the response hook.
    pub inspect_response: bool,
}

/// The largest per-request context a decision may carry.
pub const MAX_CONTEXT_BYTES: usize = 512;

/// Answer the request from the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectResponse {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

/// A validated HTTP decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpDecision {
    Forward(ForwardAction),
    Respond(DirectResponse),
    ReadBody(ReadBody),
}

/// A validated connection decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnDecision {
    Forward {
        pool: Option<String>,
        backend: Option<String>,
    },
    Reject,
}

/// Header operations one decision may carry, request and response edits
/// (or a direct response's headers) together.
pub const MAX_HEADER_OPS: usize = 256;
/// Bytes of header names and values, path and authority in one decision:
/// what the proxy would add to a request or response head. nginx refuses
/// a client's request head past 8-32 KiB; a policy gets 64 KiB.
pub const MAX_DECISION_BYTES: usize = 64 << 10;
/// Bytes of a direct response's body.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Checks a decision's size before anything in it is parsed, so that a
/// guest returning 100,000 header operations costs one cheap error.
fn within_caps<'a>(
    ops: impl IntoIterator<Item = &'a types::HeaderOp>,
    extra_bytes: usize,
) -> Result<(), String> {
    let mut count = 0usize;
    let mut bytes = extra_bytes;
    for op in ops {
        count += 1;
        if count > MAX_HEADER_OPS {
            return Err(format!("more than {MAX_HEADER_OPS} header operations"));
        }
        bytes += match op {
            types::HeaderOp::Set(h) | types::HeaderOp::Append(h) => h.name.len() + h.value.len(),
            types::HeaderOp::Remove(n) => n.len(),
        };
    }
    if bytes > MAX_DECISION_BYTES {
        return Err(format!(
            "{bytes} bytes of headers, path and authority, over {MAX_DECISION_BYTES}"
        ));
    }
    Ok(())
}

fn name(raw: &str) -> Result<HeaderName, String> {
    let n = HeaderName::from_bytes(raw.as_bytes())
        .map_err(|_| format!("{raw:?} is not a valid header name"))?;
    if crate::headers::host_only(&n) {
        return Err(format!("header {:?} is managed by the proxy", n.as_str()));
    }
    Ok(n)
}

fn value(n: &HeaderName, raw: &str) -> Result<HeaderValue, String> {
    // `HeaderValue::from_str` refuses CR, LF, NUL and other controls but tab.
    HeaderValue::from_str(raw).map_err(|_| {
        format!(
            "value of header {:?} is not a valid header value",
            n.as_str()
        )
    })
}

fn header(h: &types::Header) -> Result<(HeaderName, HeaderValue), String> {
    let n = name(&h.name)?;
    let v = value(&n, &h.value)?;
    Ok((n, v))
}

fn edits(ops: &[types::HeaderOp]) -> Result<Vec<HeaderEdit>, String> {
    ops.iter()
        .map(|op| match op {
            types::HeaderOp::Set(h) => header(h).map(|(n, v)| HeaderEdit::Set(n, v)),
            types::HeaderOp::Append(h) => header(h).map(|(n, v)| HeaderEdit::Append(n, v)),
            types::HeaderOp::Remove(n) => name(n).map(HeaderEdit::Remove),
        })
        .collect()
}

fn pool_and_backend(
    pool: &Option<String>,
    backend: &Option<String>,
    default_pool: Option<&str>,
    directory: &dyn Directory,
) -> Result<(), String> {
    match (pool.as_deref(), backend.as_deref()) {
        // The listener's own pool, checked when the configuration loaded:
        // no lookup on the common path.
        (None, None) => Ok(()),
        (pool, backend) => match pool.or(default_pool) {
            Some(p) => directory.check(p, backend),
            None => Err("names a backend but the listener has no default pool".into()),
        },
    }
}

/// Validates an HTTP decision; `allowed` says which optional hooks it
/// may ask for.
pub fn http(
    d: types::Decision,
    default_pool: Option<&str>,
    directory: &dyn Directory,
    allowed: Allowed,
) -> Result<HttpDecision, String> {
    match d {
        types::Decision::Forward(f) => {
            forward(f, default_pool, directory, allowed).map(HttpDecision::Forward)
        }
        types::Decision::Respond(r) => direct(r).map(HttpDecision::Respond),
        types::Decision::ReadBody(r) => {
            if !allowed.read_body {
                return Err(
                    "read-body is not allowed here: only on-request may ask, and \
                            only when the policy exports switchyard:policy/body-hook"
                        .into(),
                );
            }
            context(r.context.as_deref())?;
            let over_limit = match r.over_limit {
                types::OverLimit::Refuse => OverLimit::Refuse,
                types::OverLimit::Forward(f) => {
                    OverLimit::Forward(Box::new(forward(f, default_pool, directory, allowed)?))
                }
            };
            Ok(HttpDecision::ReadBody(ReadBody {
                limit: r.limit,
                over_limit,
                context: r.context,
            }))
        }
    }
}

fn context(c: Option<&[u8]>) -> Result<(), String> {
    match c {
        Some(c) if c.len() > MAX_CONTEXT_BYTES => Err(format!(
            "a context of {} bytes, over {MAX_CONTEXT_BYTES}",
            c.len()
        )),
        _ => Ok(()),
    }
}

fn forward(
    f: types::Forward,
    default_pool: Option<&str>,
    directory: &dyn Directory,
    allowed: Allowed,
) -> Result<ForwardAction, String> {
    within_caps(
        f.request_headers.iter().chain(&f.response_headers),
        f.path.as_ref().map_or(0, String::len) + f.authority.as_ref().map_or(0, String::len),
    )?;
    pool_and_backend(&f.pool, &f.backend, default_pool, directory)?;
    if f.inspect_response && !allowed.inspect_response {
        return Err("inspect-response is set, and the policy does not export \
                    switchyard:policy/response-hook"
            .into());
    }
    if f.response_body_limit.is_some() && !f.inspect_response {
        return Err("response-body-limit is set without inspect-response".into());
    }
    if let Some(b) = &f.body
        && b.len() > MAX_BODY_BYTES
    {
        return Err(format!(
            "a request body of {} bytes, over {MAX_BODY_BYTES}",
            b.len()
        ));
    }
    context(f.context.as_deref())?;
    let path = match f.path {
        None => None,
        Some(p) => {
            if !p.starts_with('/') {
                return Err(format!("path {p:?} does not start with '/'"));
            }
            Some(
                PathAndQuery::try_from(p.as_str())
                    .map_err(|_| format!("path {p:?} is not a valid request path"))?,
            )
        }
    };
    let authority = match f.authority {
        None => None,
        Some(a) => Some(
            Authority::try_from(a.as_str()).map_err(|_| format!("authority {a:?} is not valid"))?,
        ),
    };
    Ok(ForwardAction {
        context: f.context,
        pool: f.pool,
        backend: f.backend,
        path,
        authority,
        request_headers: edits(&f.request_headers)?,
        response_headers: edits(&f.response_headers)?,
        inspect_response: f.inspect_response,
        body: f.body.map(|b| Box::new(Bytes::from(b))),
        response_body_limit: f.response_body_limit,
    })
}

/// Validates a response the policy answers with: a `respond` decision,
/// or the response hook's replacement.
fn direct(r: types::Response) -> Result<DirectResponse, String> {
    if r.body.len() > MAX_BODY_BYTES {
        return Err(format!(
            "a response body of {} bytes, over {MAX_BODY_BYTES}",
            r.body.len()
        ));
    }
    if r.headers.len() > MAX_HEADER_OPS {
        return Err(format!("more than {MAX_HEADER_OPS} response headers"));
    }
    let bytes: usize = r.headers.iter().map(|h| h.name.len() + h.value.len()).sum();
    if bytes > MAX_DECISION_BYTES {
        return Err(format!(
            "{bytes} bytes of headers, over {MAX_DECISION_BYTES}"
        ));
    }
    let status = StatusCode::from_u16(r.status)
        .ok()
        .filter(|s| (200..=599).contains(&s.as_u16()))
        .ok_or_else(|| format!("status {} is not a final status (200-599)", r.status))?;
    let headers = r.headers.iter().map(header).collect::<Result<_, _>>()?;
    Ok(DirectResponse {
        status,
        headers,
        body: Bytes::from(r.body),
    })
}

/// Validates the header edits of the response hook.
pub fn response_edits(ops: Vec<types::HeaderOp>) -> Result<Vec<HeaderEdit>, String> {
    within_caps(&ops, 0)?;
    edits(&ops)
}

/// What the response hook decided, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseAction {
    /// Edit the upstream response's headers and send it on.
    Edit(Vec<HeaderEdit>),
    /// Send this instead; the upstream body is dropped unread.
    Replace(DirectResponse),
    /// Send the request once more, to another backend, when it may be.
    Retry,
}

/// Validates the response hook's action.
pub fn response_action(a: types::ResponseAction) -> Result<ResponseAction, String> {
    match a {
        types::ResponseAction::Edit(ops) => response_edits(ops).map(ResponseAction::Edit),
        types::ResponseAction::Replace(r) => direct(r).map(ResponseAction::Replace),
        types::ResponseAction::Retry => Ok(ResponseAction::Retry),
    }
}

/// Validates a connection decision.
pub fn connection(
    d: types::ConnectDecision,
    default_pool: Option<&str>,
    directory: &dyn Directory,
) -> Result<ConnDecision, String> {
    match d {
        types::ConnectDecision::Forward(f) => {
            pool_and_backend(&f.pool, &f.backend, default_pool, directory)?;
            Ok(ConnDecision::Forward {
                pool: f.pool,
                backend: f.backend,
            })
        }
        types::ConnectDecision::Reject => Ok(ConnDecision::Reject),
    }
}

impl HttpDecision {
    /// The one-line JSON form printed by `switchyard policy test`.
    pub fn to_json(&self) -> Value {
        match self {
            HttpDecision::Forward(f) => json!({"forward": f.to_json()}),
            HttpDecision::ReadBody(r) => json!({"read_body": {
                "limit": r.limit,
                "over_limit": match &r.over_limit {
                    OverLimit::Refuse => json!("refuse"),
                    OverLimit::Forward(f) => json!({"forward": f.to_json()}),
                },
                "context": r.context.as_deref().map(String::from_utf8_lossy),
            }}),
            HttpDecision::Respond(r) => json!({"respond": r.to_json()}),
        }
    }
}

impl DirectResponse {
    fn to_json(&self) -> Value {
        json!({
            "status": self.status.as_u16(),
            "headers": self.headers.iter()
                .map(|(n, v)| [n.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()])
                .collect::<Vec<_>>(),
            "body": String::from_utf8_lossy(&self.body),
        })
    }
}

impl ResponseAction {
    /// The response hook's action as `policy test` prints it.
    pub fn to_json(&self) -> Value {
        match self {
            ResponseAction::Edit(edits) => {
                json!({"edit": edits.iter().map(HeaderEdit::to_json).collect::<Vec<_>>()})
            }
            ResponseAction::Replace(r) => json!({"replace": r.to_json()}),
            ResponseAction::Retry => json!("retry"),
        }
    }
}

impl ForwardAction {
    fn to_json(&self) -> Value {
        let f = self;
        json!({
            "pool": f.pool,
            "backend": f.backend,
            "path": f.path.as_ref().map(|p| p.as_str()),
            "authority": f.authority.as_ref().map(|a| a.as_str()),
            "request_headers": f.request_headers.iter().map(HeaderEdit::to_json).collect::<Vec<_>>(),
            "response_headers": f.response_headers.iter().map(HeaderEdit::to_json).collect::<Vec<_>>(),
            "inspect_response": f.inspect_response,
            "context": f.context.as_deref().map(String::from_utf8_lossy),
            "body": f.body.as_deref().map(|b| String::from_utf8_lossy(b)),
            "response_body_limit": f.response_body_limit,
        })
    }
}

impl ConnDecision {
    /// The one-line JSON form printed by `switchyard policy test --sni`.
    pub fn to_json(&self) -> Value {
        match self {
            ConnDecision::Forward { pool, backend } => {
                json!({"forward": {"pool": pool, "backend": backend}})
            }
            ConnDecision::Reject => json!("reject"),
        }
    }
}

#[cfg(test)]
mod tests;

//! Decision builders: [`forward`], [`respond`], [`read_body`], and the
//! conversions into what each hook returns.

use crate::{
    ConnectDecision, ConnectForward, Decision, Forward, Header, HeaderOp, OverLimit, ReadBody,
    Response, ResponseAction,
};

/// A forward decision to the listener's default pool, with no edits.
pub fn forward() -> Forward {
    Forward {
        pool: None,
        backend: None,
        path: None,
        authority: None,
        request_headers: Vec::new(),
        response_headers: Vec::new(),
        inspect_response: false,
        context: None,
        body: None,
        response_body_limit: None,
    }
}

/// A direct response with this status, no headers and an empty body.
pub fn respond(status: u16) -> Response {
    Response {
        status,
        headers: Vec::new(),
        body: Vec::new(),
    }
}

fn header(name: &str, value: &str) -> Header {
    Header {
        name: name.to_owned(),
        value: value.to_owned(),
    }
}

impl Forward {
    /// Send to this pool instead of the listener's default.
    pub fn pool(mut self, pool: &str) -> Self {
        self.pool = Some(pool.to_owned());
        self
    }
    /// Send to this backend (by name) of the chosen pool.
    pub fn backend(mut self, backend: &str) -> Self {
        self.backend = Some(backend.to_owned());
        self
    }
    /// Replace the upstream path.
    pub fn path(mut self, path: &str) -> Self {
        self.path = Some(path.to_owned());
        self
    }
    /// Replace the upstream authority (Host).
    pub fn authority(mut self, authority: &str) -> Self {
        self.authority = Some(authority.to_owned());
        self
    }
    /// Set a request header sent upstream.
    pub fn set_request_header(mut self, name: &str, value: &str) -> Self {
        self.request_headers
            .push(HeaderOp::Set(header(name, value)));
        self
    }
    /// Append a request header sent upstream, keeping the ones there.
    pub fn append_request_header(mut self, name: &str, value: &str) -> Self {
        self.request_headers
            .push(HeaderOp::Append(header(name, value)));
        self
    }
    /// Remove a request header before it goes upstream.
    pub fn remove_request_header(mut self, name: &str) -> Self {
        self.request_headers.push(HeaderOp::Remove(name.to_owned()));
        self
    }
    /// Set a response header sent to the client.
    pub fn set_response_header(mut self, name: &str, value: &str) -> Self {
        self.response_headers
            .push(HeaderOp::Set(header(name, value)));
        self
    }
    /// Append a response header sent to the client.
    pub fn append_response_header(mut self, name: &str, value: &str) -> Self {
        self.response_headers
            .push(HeaderOp::Append(header(name, value)));
        self
    }
    /// Ask for the `on_response` hook to run for this request.
    pub fn inspect_response(mut self) -> Self {
        self.inspect_response = true;
        self
    }
    /// Ask for the response hook with the upstream body, read up to
    /// `limit` bytes (the listener's `max_policy_body_bytes` caps it). A
    /// longer body streams to the client unread and the hook gets
    /// [`ResponseBody::OverLimit`](crate::ResponseBody::OverLimit).
    pub fn inspect_response_body(mut self, limit: u32) -> Self {
        self.inspect_response = true;
        self.response_body_limit = Some(limit);
        self
    }
    /// Send this body upstream instead of the client's (the host sets
    /// `content-length`).
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }
    /// Carry a small value (at most 512 bytes) to this request's later
    /// hooks: instances are pooled, so a global set in `on_request` may
    /// not be there when `on_response` runs; this is.
    pub fn context(mut self, context: impl Into<Vec<u8>>) -> Self {
        self.context = Some(context.into());
        self
    }
}

impl From<Forward> for Decision {
    fn from(f: Forward) -> Self {
        Decision::Forward(f)
    }
}

impl Response {
    /// Add a header to the response.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push(header(name, value));
        self
    }
    /// Set the response body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
}

impl From<Response> for Decision {
    fn from(r: Response) -> Self {
        Decision::Respond(r)
    }
}

impl From<Response> for ResponseAction {
    /// The response hook's replacement.
    fn from(r: Response) -> Self {
        ResponseAction::Replace(r)
    }
}

impl From<Vec<HeaderOp>> for ResponseAction {
    /// The response hook's header edits.
    fn from(ops: Vec<HeaderOp>) -> Self {
        ResponseAction::Edit(ops)
    }
}

impl ConnectForward {
    /// Forward to the listener's default pool.
    pub fn default_pool() -> Self {
        ConnectForward {
            pool: None,
            backend: None,
        }
    }
    /// Forward to this pool.
    pub fn to_pool(pool: &str) -> Self {
        ConnectForward {
            pool: Some(pool.to_owned()),
            backend: None,
        }
    }
    /// Pick this backend (by name) of the chosen pool.
    pub fn backend(mut self, backend: &str) -> Self {
        self.backend = Some(backend.to_owned());
        self
    }
}

impl From<ConnectForward> for ConnectDecision {
    fn from(f: ConnectForward) -> Self {
        ConnectDecision::Forward(f)
    }
}

/// Read the request body, up to `limit` bytes, and decide in
/// [`HttpPolicy::on_request_body`](crate::HttpPolicy::on_request_body). A
/// longer body is refused with 413 unless [`ReadBody::or_forward`] says
/// where it goes unread.
pub fn read_body(limit: u32) -> ReadBody {
    ReadBody {
        limit,
        over_limit: OverLimit::Refuse,
        context: None,
    }
}

impl ReadBody {
    /// A body over the limit is forwarded as `f` says, unread.
    pub fn or_forward(mut self, f: Forward) -> Self {
        self.over_limit = OverLimit::Forward(f);
        self
    }
    /// Carry a small value to `on_request_body`.
    pub fn context(mut self, context: impl Into<Vec<u8>>) -> Self {
        self.context = Some(context.into());
        self
    }
}

impl From<ReadBody> for Decision {
    fn from(r: ReadBody) -> Self {
        Decision::ReadBody(r)
    }
}

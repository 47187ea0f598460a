//! What a policy reads, and the host side of the `request-head`,
//! `response-head` and `connection` resources that show it.
//!
//! A hook gets handles, not copies: the request's head is moved into the
//! instance's store for the call ([`Lent`]) and moved back after it, and
//! each accessor the policy calls copies out only what it asks for. A policy
//! that routes on the path pays for one string, not for every header (each
//! string lowered into the guest costs an allocation call into it, ~0.1 µs).
//!
//! An instance serves one call at a time and a call is lent at most one
//! request, response and connection, so the handles need no table: each is
//! a borrow of rep 0 that stands for "the one lent to this call", and the
//! canonical ABI ends every borrow when the call returns, so a guest cannot
//! keep one for a later call.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, Version};
use wasmtime::component::Resource;

use super::bindings::types;
use super::host_api::HostState;

/// The head of the request being decided, as the policy reads it.
#[derive(Debug, Clone, Default)]
pub struct RequestView {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The authority the client named (`:authority`, absolute form or
    /// `Host`), when it is visible ASCII.
    pub authority: Option<HeaderValue>,
}

impl RequestView {
    /// A request for tests, tools and load checks: a method, an
    /// origin-form target (`/path?query`) and header pairs; a `host`
    /// header is also the authority. Boxed, as the hooks borrow it.
    pub fn build(
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Box<Self>> {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.append(
                http::header::HeaderName::from_bytes(n.as_bytes())?,
                HeaderValue::from_str(v)?,
            );
        }
        Ok(Box::new(RequestView {
            method: Method::from_bytes(method.as_bytes())?,
            uri: target.parse()?,
            version: Version::HTTP_11,
            authority: map.get(http::header::HOST).cloned(),
            headers: map,
            scheme: "http",
        }))
    }
}

/// The head of an upstream response, for the response hook.
#[derive(Debug, Clone, Default)]
pub struct ResponseView {
    pub status: StatusCode,
    pub headers: HeaderMap,
}

/// The connection a request or flow belongs to. Built once per connection
/// and shared by its requests; addresses are formatted only when read.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub client: SocketAddr,
    pub local: SocketAddr,
    pub listener: Arc<str>,
    pub pool: Option<Arc<str>>,
    pub transport: types::Transport,
    pub tls: Option<types::TlsInfo>,
}

impl ConnectionInfo {
    pub fn new(
        client: SocketAddr,
        local: SocketAddr,
        listener: &str,
        pool: Option<&str>,
        transport: types::Transport,
    ) -> Self {
        ConnectionInfo {
            client,
            local,
            listener: listener.into(),
            pool: pool.map(Into::into),
            transport,
            tls: None,
        }
    }
}

/// What the running call was lent, kept in the instance's store. Between
/// calls it holds defaults and no connection. The heads are boxed, so
/// lending one swaps two pointers, not two ~300-byte structs each way
/// (bench/count: ~250 instructions per policy call).
#[derive(Default)]
pub struct Lent {
    pub(crate) request: Box<RequestView>,
    pub(crate) response: Box<ResponseView>,
    pub(crate) connection: Option<Arc<ConnectionInfo>>,
}

/// A handle to the lent request head (the resource's host type; no data).
pub struct RequestHandle;
/// A handle to the lent response head.
pub struct ResponseHandle;
/// A handle to the lent connection.
pub struct ConnectionHandle;

/// The handle a call's parameter carries.
pub(crate) fn handle<T: 'static>() -> Resource<T> {
    Resource::new_borrow(0)
}

fn text(v: &HeaderValue) -> String {
    match v.to_str() {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
    }
}

fn first(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).map(text)
}

fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers.get_all(name).iter().map(text).collect()
}

fn all(headers: &HeaderMap) -> Vec<types::Header> {
    headers
        .iter()
        .map(|(n, v)| types::Header {
            name: n.as_str().to_owned(),
            value: text(v),
        })
        .collect()
}

fn address(a: SocketAddr) -> types::SocketAddress {
    types::SocketAddress {
        ip: a.ip().to_canonical().to_string(),
        port: a.port(),
    }
}

fn version(v: Version) -> types::HttpVersion {
    match v {
        Version::HTTP_10 | Version::HTTP_09 => types::HttpVersion::Http10,
        Version::HTTP_2 => types::HttpVersion::Http2,
        Version::HTTP_3 => types::HttpVersion::Http3,
        _ => types::HttpVersion::Http11,
    }
}

/// A header name as the guest gave it, lower-cased for the lookup
/// (`HeaderMap` lookups by `&str` need the lower-case form).
fn lower(name: &str) -> std::borrow::Cow<'_, str> {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        name.to_ascii_lowercase().into()
    } else {
        name.into()
    }
}

type R<T> = wasmtime::Result<T>;

impl HostState {
    fn request(&self) -> &RequestView {
        &self.lent.request
    }
    fn response(&self) -> &ResponseView {
        &self.lent.response
    }
    fn connection(&self) -> R<&ConnectionInfo> {
        self.lent
            .connection
            .as_deref()
            .ok_or_else(|| wasmtime::format_err!("no connection is lent to this call"))
    }
}

type Req = Resource<RequestHandle>;
type Resp = Resource<ResponseHandle>;
type Conn = Resource<ConnectionHandle>;

impl types::HostRequestHead for HostState {
    fn method(&mut self, _: Req) -> R<String> {
        Ok(self.request().method.as_str().to_owned())
    }
    fn scheme(&mut self, _: Req) -> R<String> {
        Ok(self.request().scheme.to_owned())
    }
    fn authority(&mut self, _: Req) -> R<String> {
        Ok(self
            .request()
            .authority
            .as_ref()
            .map(text)
            .unwrap_or_default())
    }
    fn path(&mut self, _: Req) -> R<String> {
        Ok(self.request().uri.path().to_owned())
    }
    fn query(&mut self, _: Req) -> R<Option<String>> {
        Ok(self.request().uri.query().map(str::to_owned))
    }
    fn version(&mut self, _: Req) -> R<types::HttpVersion> {
        Ok(version(self.request().version))
    }
    fn header(&mut self, _: Req, name: String) -> R<Option<String>> {
        Ok(first(&self.request().headers, &lower(&name)))
    }
    fn header_values(&mut self, _: Req, name: String) -> R<Vec<String>> {
        Ok(values(&self.request().headers, &lower(&name)))
    }
    fn headers(&mut self, _: Req) -> R<Vec<types::Header>> {
        Ok(all(&self.request().headers))
    }
    // Handles are only ever lent to the guest, never given, so it has none
    // of its own to drop.
    fn drop(&mut self, _: Req) -> R<()> {
        Ok(())
    }
}

impl types::HostResponseHead for HostState {
    fn status(&mut self, _: Resp) -> R<u16> {
        Ok(self.response().status.as_u16())
    }
    fn header(&mut self, _: Resp, name: String) -> R<Option<String>> {
        Ok(first(&self.response().headers, &lower(&name)))
    }
    fn header_values(&mut self, _: Resp, name: String) -> R<Vec<String>> {
        Ok(values(&self.response().headers, &lower(&name)))
    }
    fn headers(&mut self, _: Resp) -> R<Vec<types::Header>> {
        Ok(all(&self.response().headers))
    }
    fn drop(&mut self, _: Resp) -> R<()> {
        Ok(())
    }
}

impl types::HostConnection for HostState {
    fn client(&mut self, _: Conn) -> R<types::SocketAddress> {
        Ok(address(self.connection()?.client))
    }
    fn local(&mut self, _: Conn) -> R<types::SocketAddress> {
        Ok(address(self.connection()?.local))
    }
    fn listener(&mut self, _: Conn) -> R<String> {
        Ok(self.connection()?.listener.to_string())
    }
    fn pool(&mut self, _: Conn) -> R<Option<String>> {
        Ok(self.connection()?.pool.as_deref().map(str::to_owned))
    }
    fn transport(&mut self, _: Conn) -> R<types::Transport> {
        Ok(self.connection()?.transport)
    }
    fn tls(&mut self, _: Conn) -> R<Option<types::TlsInfo>> {
        Ok(self.connection()?.tls.clone())
    }
    fn drop(&mut self, _: Conn) -> R<()> {
        Ok(())
    }
}

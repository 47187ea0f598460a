//! What a policy reads, and the host side of the `request`, `response` and
//! `connection` resources that show it.
//!
//! A hook gets handles, not copies: the request's head is moved into the
//! instance's resource table for the call and moved back after it, and each
//! accessor the policy calls copies out only what it asks for. A policy that
//! routes on the path pays for one string, not for every header (each string
//! lowered into the guest costs an allocation call into it, ~0.1 µs).

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
    /// A request for tests, tools and load checks: `GET`-style method,
    /// origin-form target, `name: value` headers (a `host` header is also
    /// the authority).
    pub fn build(method: &str, target: &str, headers: &[(&str, &str)]) -> anyhow::Result<Self> {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.append(
                http::header::HeaderName::from_bytes(n.as_bytes())?,
                HeaderValue::from_str(v)?,
            );
        }
        Ok(RequestView {
            method: Method::from_bytes(method.as_bytes())?,
            uri: target.parse()?,
            version: Version::HTTP_11,
            authority: map.get(http::header::HOST).cloned(),
            headers: map,
            scheme: "http",
        })
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

/// The table entry behind a `connection` handle.
pub struct ConnectionHandle(pub Arc<ConnectionInfo>);

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
    fn request(&self, r: &Resource<RequestView>) -> R<&RequestView> {
        Ok(self.table.get(r)?)
    }
    fn response(&self, r: &Resource<ResponseView>) -> R<&ResponseView> {
        Ok(self.table.get(r)?)
    }
    fn connection(&self, r: &Resource<ConnectionHandle>) -> R<&ConnectionInfo> {
        Ok(&self.table.get(r)?.0)
    }
}

impl types::HostRequestHead for HostState {
    fn method(&mut self, r: Resource<RequestView>) -> R<String> {
        Ok(self.request(&r)?.method.as_str().to_owned())
    }
    fn scheme(&mut self, r: Resource<RequestView>) -> R<String> {
        Ok(self.request(&r)?.scheme.to_owned())
    }
    fn authority(&mut self, r: Resource<RequestView>) -> R<String> {
        Ok(self
            .request(&r)?
            .authority
            .as_ref()
            .map(text)
            .unwrap_or_default())
    }
    fn path(&mut self, r: Resource<RequestView>) -> R<String> {
        Ok(self.request(&r)?.uri.path().to_owned())
    }
    fn query(&mut self, r: Resource<RequestView>) -> R<Option<String>> {
        Ok(self.request(&r)?.uri.query().map(str::to_owned))
    }
    fn version(&mut self, r: Resource<RequestView>) -> R<types::HttpVersion> {
        Ok(version(self.request(&r)?.version))
    }
    fn header(&mut self, r: Resource<RequestView>, name: String) -> R<Option<String>> {
        Ok(first(&self.request(&r)?.headers, &lower(&name)))
    }
    fn header_values(&mut self, r: Resource<RequestView>, name: String) -> R<Vec<String>> {
        Ok(values(&self.request(&r)?.headers, &lower(&name)))
    }
    fn headers(&mut self, r: Resource<RequestView>) -> R<Vec<types::Header>> {
        Ok(all(&self.request(&r)?.headers))
    }
    // Handles are only ever lent to the guest, never given, so it has none
    // of its own to drop; the host takes its entries back after each call.
    fn drop(&mut self, r: Resource<RequestView>) -> R<()> {
        self.table.delete(r)?;
        Ok(())
    }
}

impl types::HostResponseHead for HostState {
    fn status(&mut self, r: Resource<ResponseView>) -> R<u16> {
        Ok(self.response(&r)?.status.as_u16())
    }
    fn header(&mut self, r: Resource<ResponseView>, name: String) -> R<Option<String>> {
        Ok(first(&self.response(&r)?.headers, &lower(&name)))
    }
    fn header_values(&mut self, r: Resource<ResponseView>, name: String) -> R<Vec<String>> {
        Ok(values(&self.response(&r)?.headers, &lower(&name)))
    }
    fn headers(&mut self, r: Resource<ResponseView>) -> R<Vec<types::Header>> {
        Ok(all(&self.response(&r)?.headers))
    }
    fn drop(&mut self, r: Resource<ResponseView>) -> R<()> {
        self.table.delete(r)?;
        Ok(())
    }
}

impl types::HostConnection for HostState {
    fn client(&mut self, r: Resource<ConnectionHandle>) -> R<types::SocketAddress> {
        Ok(address(self.connection(&r)?.client))
    }
    fn local(&mut self, r: Resource<ConnectionHandle>) -> R<types::SocketAddress> {
        Ok(address(self.connection(&r)?.local))
    }
    fn listener(&mut self, r: Resource<ConnectionHandle>) -> R<String> {
        Ok(self.connection(&r)?.listener.to_string())
    }
    fn pool(&mut self, r: Resource<ConnectionHandle>) -> R<Option<String>> {
        Ok(self.connection(&r)?.pool.as_deref().map(str::to_owned))
    }
    fn transport(&mut self, r: Resource<ConnectionHandle>) -> R<types::Transport> {
        Ok(self.connection(&r)?.transport)
    }
    fn tls(&mut self, r: Resource<ConnectionHandle>) -> R<Option<types::TlsInfo>> {
        Ok(self.connection(&r)?.tls.clone())
    }
    fn drop(&mut self, r: Resource<ConnectionHandle>) -> R<()> {
        self.table.delete(r)?;
        Ok(())
    }
}

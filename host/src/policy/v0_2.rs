//! `switchyard:policy@0.2.0` on top of 0.3: the host imports of a policy
//! built against 0.2 answer through 0.3's implementations, and its
//! decisions are turned into 0.3's before they are validated, so both
//! versions behave the same wherever 0.2 can say something. What 0.2 does
//! differently: a key-value call over the store's limits traps the guest
//! (0.3 returns an error), and its `on-response` is part of the world.
//!
//! The generated types of the two versions are distinct Rust types even
//! where their WIT is the same, hence the field-by-field conversions.

use wasmtime::component::Resource;

use super::bindings::v0_2::{backends, clock, kv, log, random, types};
use super::bindings::{self as v3};
use super::host_api::HostState;
use super::view::{ConnectionHandle, RequestHandle, ResponseHandle};

type R<T> = wasmtime::Result<T>;
type Req = Resource<RequestHandle>;
type Resp = Resource<ResponseHandle>;
type Conn = Resource<ConnectionHandle>;

use v3::types::{HostConnection, HostRequestHead, HostResponseHead};

fn header(h: v3::types::Header) -> types::Header {
    types::Header {
        name: h.name,
        value: h.value,
    }
}

fn headers(h: Vec<v3::types::Header>) -> Vec<types::Header> {
    h.into_iter().map(header).collect()
}

fn address(a: v3::types::SocketAddress) -> types::SocketAddress {
    types::SocketAddress {
        ip: a.ip,
        port: a.port,
    }
}

impl types::Host for HostState {}

impl types::HostRequestHead for HostState {
    fn method(&mut self, r: Req) -> R<String> {
        HostRequestHead::method(self, r)
    }
    fn scheme(&mut self, r: Req) -> R<String> {
        HostRequestHead::scheme(self, r)
    }
    fn authority(&mut self, r: Req) -> R<String> {
        HostRequestHead::authority(self, r)
    }
    fn path(&mut self, r: Req) -> R<String> {
        HostRequestHead::path(self, r)
    }
    fn query(&mut self, r: Req) -> R<Option<String>> {
        HostRequestHead::query(self, r)
    }
    fn version(&mut self, r: Req) -> R<types::HttpVersion> {
        Ok(match HostRequestHead::version(self, r)? {
            v3::types::HttpVersion::Http10 => types::HttpVersion::Http10,
            v3::types::HttpVersion::Http11 => types::HttpVersion::Http11,
            v3::types::HttpVersion::Http2 => types::HttpVersion::Http2,
            v3::types::HttpVersion::Http3 => types::HttpVersion::Http3,
        })
    }
    fn header(&mut self, r: Req, name: String) -> R<Option<String>> {
        HostRequestHead::header(self, r, name)
    }
    fn header_values(&mut self, r: Req, name: String) -> R<Vec<String>> {
        HostRequestHead::header_values(self, r, name)
    }
    fn headers(&mut self, r: Req) -> R<Vec<types::Header>> {
        HostRequestHead::headers(self, r).map(headers)
    }
    fn drop(&mut self, r: Req) -> R<()> {
        HostRequestHead::drop(self, r)
    }
}

impl types::HostResponseHead for HostState {
    fn status(&mut self, r: Resp) -> R<u16> {
        HostResponseHead::status(self, r)
    }
    fn header(&mut self, r: Resp, name: String) -> R<Option<String>> {
        HostResponseHead::header(self, r, name)
    }
    fn header_values(&mut self, r: Resp, name: String) -> R<Vec<String>> {
        HostResponseHead::header_values(self, r, name)
    }
    fn headers(&mut self, r: Resp) -> R<Vec<types::Header>> {
        HostResponseHead::headers(self, r).map(headers)
    }
    fn drop(&mut self, r: Resp) -> R<()> {
        HostResponseHead::drop(self, r)
    }
}

impl types::HostConnection for HostState {
    fn client(&mut self, c: Conn) -> R<types::SocketAddress> {
        HostConnection::client(self, c).map(address)
    }
    fn local(&mut self, c: Conn) -> R<types::SocketAddress> {
        HostConnection::local(self, c).map(address)
    }
    fn listener(&mut self, c: Conn) -> R<String> {
        HostConnection::listener(self, c)
    }
    fn pool(&mut self, c: Conn) -> R<Option<String>> {
        HostConnection::pool(self, c)
    }
    fn transport(&mut self, c: Conn) -> R<types::Transport> {
        Ok(match HostConnection::transport(self, c)? {
            v3::types::Transport::Tcp => types::Transport::Tcp,
            v3::types::Transport::Udp => types::Transport::Udp,
        })
    }
    fn tls(&mut self, c: Conn) -> R<Option<types::TlsInfo>> {
        Ok(HostConnection::tls(self, c)?.map(|t| types::TlsInfo {
            sni: t.sni,
            alpn: t.alpn,
            version: t.version,
            client_subject: t.client_subject,
        }))
    }
    fn drop(&mut self, c: Conn) -> R<()> {
        HostConnection::drop(self, c)
    }
}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, message: String) {
        let level = match level {
            log::Level::Trace => v3::log::Level::Trace,
            log::Level::Debug => v3::log::Level::Debug,
            log::Level::Info => v3::log::Level::Info,
            log::Level::Warn => v3::log::Level::Warn,
            log::Level::Error => v3::log::Level::Error,
        };
        v3::log::Host::log(self, level, message)
    }
}

impl clock::Host for HostState {
    fn monotonic_now(&mut self) -> u64 {
        v3::clock::Host::monotonic_now(self)
    }
    fn wall_now_ms(&mut self) -> u64 {
        v3::clock::Host::wall_now_ms(self)
    }
}

impl random::Host for HostState {
    fn next_u64(&mut self) -> u64 {
        v3::random::Host::next_u64(self)
    }
}

/// 0.2 has no error in its key-value results: an error traps the guest,
/// as it always did.
fn trap<T>(r: Result<T, v3::kv::KvError>) -> R<T> {
    r.map_err(|e| {
        wasmtime::format_err!(match e {
            v3::kv::KvError::TooLarge(m) | v3::kv::KvError::Full(m) => m,
            v3::kv::KvError::Unavailable(m) => format!("kv store unavailable: {m}"),
        })
    })
}

impl kv::Host for HostState {
    async fn get(&mut self, key: String) -> R<Option<Vec<u8>>> {
        trap(v3::kv::Host::get(self, key).await)
    }
    async fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> R<()> {
        trap(v3::kv::Host::set(self, key, value, ttl_ms).await)
    }
    async fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> R<bool> {
        trap(v3::kv::Host::compare_and_swap(self, key, expected, new, ttl_ms).await)
    }
    async fn increment(&mut self, key: String, delta: i64, ttl_ms: Option<u64>) -> R<i64> {
        trap(v3::kv::Host::increment(self, key, delta, ttl_ms).await)
    }
    async fn delete(&mut self, key: String) -> R<bool> {
        trap(v3::kv::Host::delete(self, key).await)
    }
}

impl backends::Host for HostState {
    fn for_pool(&mut self, pool: String) -> Option<Vec<types::Backend>> {
        let list = v3::backends::Host::for_pool(self, pool)?;
        Some(
            list.into_iter()
                .map(|b| types::Backend {
                    name: b.name,
                    address: b.address,
                    weight: b.weight,
                    healthy: b.healthy,
                    in_flight: b.in_flight,
                })
                .collect(),
        )
    }
}

fn header_op(op: types::HeaderOp) -> v3::types::HeaderOp {
    let h = |h: types::Header| v3::types::Header {
        name: h.name,
        value: h.value,
    };
    match op {
        types::HeaderOp::Set(x) => v3::types::HeaderOp::Set(h(x)),
        types::HeaderOp::Append(x) => v3::types::HeaderOp::Append(h(x)),
        types::HeaderOp::Remove(n) => v3::types::HeaderOp::Remove(n),
    }
}

fn header_ops(ops: Vec<types::HeaderOp>) -> Vec<v3::types::HeaderOp> {
    ops.into_iter().map(header_op).collect()
}

/// A 0.2 response hook's edits, as 0.3's action.
pub(super) fn response_action(ops: Vec<types::HeaderOp>) -> v3::types::ResponseAction {
    v3::types::ResponseAction::Edit(header_ops(ops))
}

/// A 0.2 request decision, as 0.3's.
pub(super) fn decision(d: types::Decision) -> v3::types::Decision {
    match d {
        types::Decision::Forward(f) => v3::types::Decision::Forward(v3::types::Forward {
            pool: f.pool,
            backend: f.backend,
            path: f.path,
            authority: f.authority,
            request_headers: header_ops(f.request_headers),
            response_headers: header_ops(f.response_headers),
            inspect_response: f.inspect_response,
            context: None,
            body: None,
            response_body_limit: None,
        }),
        types::Decision::Respond(r) => v3::types::Decision::Respond(v3::types::Response {
            status: r.status,
            headers: r
                .headers
                .into_iter()
                .map(|h| v3::types::Header {
                    name: h.name,
                    value: h.value,
                })
                .collect(),
            body: r.body,
        }),
    }
}

/// A 0.2 connection decision, as 0.3's.
pub(super) fn connect_decision(d: types::ConnectDecision) -> v3::types::ConnectDecision {
    match d {
        types::ConnectDecision::Forward(f) => {
            v3::types::ConnectDecision::Forward(v3::types::ConnectForward {
                pool: f.pool,
                backend: f.backend,
            })
        }
        types::ConnectDecision::Reject => v3::types::ConnectDecision::Reject,
    }
}

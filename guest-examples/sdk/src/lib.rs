//! Rust SDK for Switchyard policies.
//!
//! A policy is a WebAssembly component that implements one of the worlds of
//! the `switchyard:policy` WIT package (`wit/` at the repository root). This
//! crate wraps the generated bindings with:
//!
//! - the contract's types at the crate root ([`RequestHead`], [`Decision`], ...);
//! - decision builders ([`forward`], [`respond`], [`read_body`],
//!   [`ConnectForward`]);
//! - the request, response and connection as handles whose parts are read on
//!   demand ([`RequestHead::path`], [`RequestHead::header`],
//!   [`Connection::client`], ...): a call costs only what the policy reads;
//! - helpers for request heads ([`RequestHead::cookie`], [`RequestHead::host`]);
//! - the host imports as plain modules ([`log`], [`kv`], [`clock`], [`random`],
//!   [`backends`]);
//! - traits with defaults for the hooks a policy doesn't need
//!   ([`HttpPolicy`], [`ConnectionPolicy`]) and one export macro per world.
//!
//! ```ignore
//! use switchyard_policy::*;
//!
//! struct Hello;
//! impl HttpPolicy for Hello {
//!     fn on_request(req: &RequestHead, _conn: &Connection) -> Decision {
//!         if req.path() == "/hello" {
//!             respond(200).body("hi\n").into()
//!         } else {
//!             forward().into()
//!         }
//!     }
//! }
//! http_policy!(Hello);
//! ```

// Lets the generated code name this crate the same way inside and outside it.
extern crate self as switchyard_policy;

/// Bindings for the `http-policy` world.
#[doc(hidden)]
pub mod http {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "switchyard:policy/http-policy",
        pub_export_macro: true,
        export_macro_name: "export_http_policy",
        default_bindings_module: "switchyard_policy::http",
        runtime_path: "switchyard_policy::__rt",
    });
}

/// Bindings for the `http-policy-with-response` world: `http-policy` and
/// the optional `response-hook` export. Shares every type and import with
/// [`http`].
#[doc(hidden)]
pub mod http_with_response {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "switchyard:policy/http-policy-with-response",
        with: {
            "switchyard:policy/types@0.3.0": crate::http::switchyard::policy::types,
            "switchyard:policy/log@0.3.0": crate::http::switchyard::policy::log,
            "switchyard:policy/clock@0.3.0": crate::http::switchyard::policy::clock,
            "switchyard:policy/random@0.3.0": crate::http::switchyard::policy::random,
            "switchyard:policy/kv@0.3.0": crate::http::switchyard::policy::kv,
            "switchyard:policy/backends@0.3.0": crate::http::switchyard::policy::backends,
            "switchyard:policy/metrics@0.3.0": crate::http::switchyard::policy::metrics,
            "switchyard:policy/http-client@0.3.0": crate::http::switchyard::policy::http_client,
        },
        pub_export_macro: true,
        export_macro_name: "export_http_policy_with_response",
        default_bindings_module: "switchyard_policy::http_with_response",
        runtime_path: "switchyard_policy::__rt",
    });
}

/// Bindings for the `http-policy-with-body` world: `http-policy` and the
/// optional `body-hook` export. Shares every type and import with [`http`].
#[doc(hidden)]
pub mod http_with_body {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "switchyard:policy/http-policy-with-body",
        with: {
            "switchyard:policy/types@0.3.0": crate::http::switchyard::policy::types,
            "switchyard:policy/log@0.3.0": crate::http::switchyard::policy::log,
            "switchyard:policy/clock@0.3.0": crate::http::switchyard::policy::clock,
            "switchyard:policy/random@0.3.0": crate::http::switchyard::policy::random,
            "switchyard:policy/kv@0.3.0": crate::http::switchyard::policy::kv,
            "switchyard:policy/backends@0.3.0": crate::http::switchyard::policy::backends,
            "switchyard:policy/metrics@0.3.0": crate::http::switchyard::policy::metrics,
            "switchyard:policy/http-client@0.3.0": crate::http::switchyard::policy::http_client,
        },
        pub_export_macro: true,
        export_macro_name: "export_http_policy_with_body",
        default_bindings_module: "switchyard_policy::http_with_body",
        runtime_path: "switchyard_policy::__rt",
    });
}

/// Bindings for the `http-policy-with-log` world: `http-policy` and the
/// optional `log-hook` export. Shares every type and import with [`http`].
#[doc(hidden)]
pub mod http_with_log {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "switchyard:policy/http-policy-with-log",
        with: {
            "switchyard:policy/types@0.3.0": crate::http::switchyard::policy::types,
            "switchyard:policy/log@0.3.0": crate::http::switchyard::policy::log,
            "switchyard:policy/clock@0.3.0": crate::http::switchyard::policy::clock,
            "switchyard:policy/random@0.3.0": crate::http::switchyard::policy::random,
            "switchyard:policy/kv@0.3.0": crate::http::switchyard::policy::kv,
            "switchyard:policy/backends@0.3.0": crate::http::switchyard::policy::backends,
            "switchyard:policy/metrics@0.3.0": crate::http::switchyard::policy::metrics,
            "switchyard:policy/http-client@0.3.0": crate::http::switchyard::policy::http_client,
        },
        pub_export_macro: true,
        export_macro_name: "export_http_policy_with_log",
        default_bindings_module: "switchyard_policy::http_with_log",
        runtime_path: "switchyard_policy::__rt",
    });
}

/// Bindings for the `connection-policy` world. Shares every type and import
/// with [`http`].
#[doc(hidden)]
pub mod connection {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "switchyard:policy/connection-policy",
        with: {
            "switchyard:policy/types@0.3.0": crate::http::switchyard::policy::types,
            "switchyard:policy/log@0.3.0": crate::http::switchyard::policy::log,
            "switchyard:policy/clock@0.3.0": crate::http::switchyard::policy::clock,
            "switchyard:policy/random@0.3.0": crate::http::switchyard::policy::random,
            "switchyard:policy/kv@0.3.0": crate::http::switchyard::policy::kv,
            "switchyard:policy/backends@0.3.0": crate::http::switchyard::policy::backends,
            "switchyard:policy/metrics@0.3.0": crate::http::switchyard::policy::metrics,
            "switchyard:policy/http-client@0.3.0": crate::http::switchyard::policy::http_client,
        },
        pub_export_macro: true,
        export_macro_name: "export_connection_policy",
        default_bindings_module: "switchyard_policy::connection",
        runtime_path: "switchyard_policy::__rt",
    });
}

#[doc(hidden)]
pub use wit_bindgen::rt as __rt;

pub use http::switchyard::policy::types::{
    Backend, ConnectDecision, ConnectForward, Connection, Decision, Forward, Header, HeaderOp,
    HttpVersion, LogSummary, Outcome, OverLimit, ReadBody, RequestHead, Response, ResponseAction,
    ResponseBody, ResponseHead, SocketAddress, TlsInfo, Transport,
};

mod build;
pub use build::{forward, read_body, respond};

/// Host imports: the policy's key-value store, namespaced per policy. Every
/// call returns a `Result`: decide what a store that cannot answer means
/// for your policy ([`kv::KvError`]).
pub mod kv {
    pub use crate::http::switchyard::policy::kv::*;
}

/// Host imports: monotonic and wall clocks.
pub mod clock {
    pub use crate::http::switchyard::policy::clock::*;
}

/// Host imports: random numbers.
pub mod random {
    pub use crate::http::switchyard::policy::random::*;
}

/// Host imports: the policy's own metrics, exported as
/// `switchyard_policy_<policy>_<name>`; define them in `init`.
pub mod metrics {
    pub use crate::http::switchyard::policy::metrics::*;
}

/// Host imports: requests to other services ([`call::http_call`]), through
/// the host's client, to the pools the listener's `policy_call_pools`
/// lists. The guest waits for the answer; the worker does not.
pub mod call {
    use crate::Header;
    pub use crate::http::switchyard::policy::http_client::{
        CallError, IncomingResponse, OutgoingRequest, http_call,
    };

    /// A request with no headers and no body.
    pub fn request(method: &str, path: &str) -> OutgoingRequest {
        OutgoingRequest {
            method: method.to_owned(),
            path: path.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    impl OutgoingRequest {
        /// Adds a header.
        pub fn header(mut self, name: &str, value: &str) -> Self {
            self.headers.push(Header {
                name: name.to_owned(),
                value: value.to_owned(),
            });
            self
        }
        /// Sets the body.
        pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
            self.body = body.into();
            self
        }
    }

    impl IncomingResponse {
        /// The first value of a header (case-insensitive).
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value.as_str())
        }
        /// Every value of a header, in order.
        pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> {
            self.headers
                .iter()
                .filter(move |h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value.as_str())
        }
    }
}

/// Host imports: the backends of a pool, for policies that pick one.
pub mod backends {
    pub use crate::http::switchyard::policy::backends::*;
}

/// Host imports: structured logging to the `policy::<name>` target.
pub mod log {
    use crate::http::switchyard::policy::log::{Level, log};

    pub fn debug(message: &str) {
        log(Level::Debug, message)
    }
    pub fn info(message: &str) {
        log(Level::Info, message)
    }
    pub fn warn(message: &str) {
        log(Level::Warn, message)
    }
    pub fn error(message: &str) {
        log(Level::Error, message)
    }
}

/// A policy for HTTP listeners. Only [`HttpPolicy::on_request`] is required.
/// [`http_policy!`] exports `init` and `on_request`;
/// [`http_policy_with_response!`] also exports the response hook, which a
/// forward decision must have to set `inspect_response`.
pub trait HttpPolicy {
    /// Receives the policy's JSON configuration (empty when there is none).
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }
    /// Decides what to do with one request.
    fn on_request(request: &RequestHead, connection: &Connection) -> Decision;
    /// Decides on the request body, after `on_request` asked for it with
    /// [`read_body`]; called only when the policy is exported with
    /// [`http_policy_with_body!`]. `body` is the whole body (at most the
    /// limit asked for); `context` is what the [`ReadBody`] carried.
    fn on_request_body(
        _request: &RequestHead,
        _body: Vec<u8>,
        _context: Option<Vec<u8>>,
    ) -> Decision {
        forward().into()
    }
    /// Edits the response's headers or replaces the response; called only
    /// when the forward decision set `inspect_response`, and only when the
    /// policy is exported with [`http_policy_with_response!`]. `body` is
    /// the upstream body when the decision asked for it
    /// ([`Forward::inspect_response_body`]); `context` is what the forward
    /// decision carried ([`Forward::context`]).
    fn on_response(
        _request: &RequestHead,
        _response: &ResponseHead,
        _body: ResponseBody,
        _context: Option<Vec<u8>>,
    ) -> ResponseAction {
        ResponseAction::Edit(Vec::new())
    }
    /// Learns how a request ended, after its response was sent; called
    /// only when the policy is exported with [`http_policy_with_log!`].
    /// Adds no latency. (A policy with both hooks cannot be exported
    /// with this SDK yet: wit-bindgen's export macros of two worlds that
    /// share an interface collide. The WIT world
    /// `http-policy-with-response-and-log` has both.)
    fn on_log(_request: &RequestHead, _context: Option<Vec<u8>>, _summary: LogSummary) {}
}

impl<T: HttpPolicy> http::Guest for T {
    fn init(config: String) -> Result<(), String> {
        <T as HttpPolicy>::init(config)
    }
    fn on_request(request: &RequestHead, connection: &Connection) -> Decision {
        <T as HttpPolicy>::on_request(request, connection)
    }
}

impl<T: HttpPolicy> http_with_response::Guest for T {
    fn init(config: String) -> Result<(), String> {
        <T as HttpPolicy>::init(config)
    }
    fn on_request(request: &RequestHead, connection: &Connection) -> Decision {
        <T as HttpPolicy>::on_request(request, connection)
    }
}

impl<T: HttpPolicy> http_with_response::exports::switchyard::policy::response_hook::Guest for T {
    fn on_response(
        request: &RequestHead,
        response: &ResponseHead,
        body: ResponseBody,
        context: Option<Vec<u8>>,
    ) -> ResponseAction {
        <T as HttpPolicy>::on_response(request, response, body, context)
    }
}

impl<T: HttpPolicy> http_with_body::Guest for T {
    fn init(config: String) -> Result<(), String> {
        <T as HttpPolicy>::init(config)
    }
    fn on_request(request: &RequestHead, connection: &Connection) -> Decision {
        <T as HttpPolicy>::on_request(request, connection)
    }
}

impl<T: HttpPolicy> http_with_body::exports::switchyard::policy::body_hook::Guest for T {
    fn on_request_body(request: &RequestHead, body: Vec<u8>, context: Option<Vec<u8>>) -> Decision {
        <T as HttpPolicy>::on_request_body(request, body, context)
    }
}

impl<T: HttpPolicy> http_with_log::Guest for T {
    fn init(config: String) -> Result<(), String> {
        <T as HttpPolicy>::init(config)
    }
    fn on_request(request: &RequestHead, connection: &Connection) -> Decision {
        <T as HttpPolicy>::on_request(request, connection)
    }
}

impl<T: HttpPolicy> http_with_log::exports::switchyard::policy::log_hook::Guest for T {
    fn on_log(request: &RequestHead, context: Option<Vec<u8>>, summary: LogSummary) {
        <T as HttpPolicy>::on_log(request, context, summary)
    }
}

/// A policy for TCP and UDP listeners. Only [`ConnectionPolicy::on_connect`]
/// is required.
pub trait ConnectionPolicy {
    /// Receives the policy's JSON configuration (empty when there is none).
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }
    /// Decides where a new connection or flow goes.
    fn on_connect(connection: &Connection) -> ConnectDecision;
}

impl<T: ConnectionPolicy> connection::Guest for T {
    fn init(config: String) -> Result<(), String> {
        <T as ConnectionPolicy>::init(config)
    }
    fn on_connect(connection: &Connection) -> ConnectDecision {
        <T as ConnectionPolicy>::on_connect(connection)
    }
}

/// Exports a type implementing [`HttpPolicy`] as the component's
/// `http-policy` world.
#[macro_export]
macro_rules! http_policy {
    ($t:ident) => {
        $crate::http::export_http_policy!($t with_types_in $crate::http);
    };
}

/// Exports a type implementing [`HttpPolicy`] as the component's
/// `http-policy-with-response` world: `http-policy` and its response hook.
#[macro_export]
macro_rules! http_policy_with_response {
    ($t:ident) => {
        $crate::http_with_response::export_http_policy_with_response!($t with_types_in $crate::http_with_response);
    };
}

/// Exports a type implementing [`HttpPolicy`] as the component's
/// `http-policy-with-body` world: `http-policy` and its body hook.
#[macro_export]
macro_rules! http_policy_with_body {
    ($t:ident) => {
        $crate::http_with_body::export_http_policy_with_body!($t with_types_in $crate::http_with_body);
    };
}

/// Exports a type implementing [`HttpPolicy`] as the component's
/// `http-policy-with-log` world: `http-policy` and its log hook.
#[macro_export]
macro_rules! http_policy_with_log {
    ($t:ident) => {
        $crate::http_with_log::export_http_policy_with_log!($t with_types_in $crate::http_with_log);
    };
}

/// Exports a type implementing [`ConnectionPolicy`] as the component's
/// `connection-policy` world.
#[macro_export]
macro_rules! connection_policy {
    ($t:ident) => {
        $crate::connection::export_connection_policy!($t with_types_in $crate::connection);
    };
}

impl RequestHead {
    /// The value of a cookie from the `cookie` header(s).
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.header_values("cookie")
            .iter()
            .flat_map(|h| h.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_owned())
    }

    /// The host the request names, without a port.
    pub fn host(&self) -> String {
        strip_port(&self.authority()).to_owned()
    }
}

/// `example.com:8080` -> `example.com`; `[::1]:80` -> `::1`.
pub fn strip_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// A stable 64-bit FNV-1a hash, for hashing keys onto backends or buckets in
/// the same way on every instance and every restart.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Formats an error for `init`, e.g. `config: missing field "routes"`.
pub fn config_error(e: impl core::fmt::Display) -> String {
    let mut s = "config: ".to_string();
    s.push_str(&e.to_string());
    s
}

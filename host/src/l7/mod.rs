//! The L7 stage: HTTP/1.1 and HTTP/2 reverse proxying.
//!
//! ```text
//! server.rs   per connection: hyper auto (h1 + h2c); per request: policy,
//!             balance, upstream, response edits, upgrades
//! request.rs  the client's authority; the upstream URI; hash keys
//! hygiene.rs  framing checks, hop-by-hop removal, client address,
//!             X-Forwarded-*/Forwarded
//! path.rs     the one normalized path policies and backends both see
//! body.rs     the bodies crossing: response (in flight, idle and total
//!             timers), request (count, cap, idle, whose fault)
//! exchange.rs one upstream attempt and what its failure means
//! framing.rs  the request framing checks hyper leaves to its user
//! error.rs    proxy errors and the status each answers with
//! guard.rs    timers on a client connection's bytes (first byte, send)
//!             and on bodies (idle)
//! ```

pub mod body;
pub mod capture;
mod connect;
mod context;
pub mod error;
mod exchange;
pub mod framing;
pub mod guard;
pub mod hygiene;
mod log_hook;
mod logging;
pub mod path;
pub mod request;
mod request_body;
mod request_filter;
mod response_filter;
pub mod server;
pub mod sniff;
mod trace;
mod upstream_peer;
mod upstream_request;

pub use server::{Conn, HttpState, Rollout, serve_connection};

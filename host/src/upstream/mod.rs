//! The upstream stage: pools, backends and the connections to them.

pub mod client;
pub mod pool;

pub use client::{BoxError, ClientError, Failed, ResponseBody, UpstreamBody, UpstreamClient};
pub use pool::{Backend, InFlight, Pool, Upstreams};

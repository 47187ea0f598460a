//! The upstream stage: pools, backends and the connections to them.

mod budget;
pub mod calls;
pub mod client;
pub mod dns;
pub mod framing;
pub mod health;
pub mod pool;

pub use client::{BoxError, ClientError, Failed, ResponseBody, UpstreamBody, UpstreamClient};
pub use pool::{Backend, InFlight, Pool, Upstreams};

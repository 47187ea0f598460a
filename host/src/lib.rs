//! Switchyard: a load balancer programmed with WebAssembly policies.
//!
//! The data path reads `listener -> (tls) -> l4 | l7 -> policy -> balance ->
//! upstream`; see `docs/ARCHITECTURE.md`.

pub mod admin;
pub mod balance;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod headers;
pub mod l4;
pub mod l7;
pub mod listener;
pub mod logging;
pub mod policy;
pub mod proxy_protocol;
pub mod reload;
pub mod tls;
pub mod upstream;
pub mod workers;

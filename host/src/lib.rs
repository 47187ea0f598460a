//! Switchyard: a load balancer programmed with WebAssembly policies.
//!
//! The data path reads `listener -> (tls) -> l4 | l7 -> policy -> balance ->
//! upstream`; see `docs/ARCHITECTURE.md`.

pub mod cli;
pub mod config;
pub mod policy;

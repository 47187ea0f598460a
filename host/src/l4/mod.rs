//! The L4 stage: TCP proxying (bytes only, never parsed).

pub mod tcp;

pub use tcp::{TcpState, serve_connection};

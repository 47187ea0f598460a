//! The policy stage: loading Wasm components and calling them, with a
//! deadline and a memory cap on every call, behind plain Rust types.
//!
//! ```text
//! engine.rs     Engine, Linker; compile -> activate -> Policy
//! files.rs      policy files read beneath the directory; the cache dir check
//! ticker.rs     the epoch ticker: fast while a call runs, parked when quiet
//! instances.rs  one loaded version, its warm instances, the hook calls
//! hooks.rs      the optional hooks: on-response, on-log
//! bindings.rs   bindgen! per world (the only generated code)
//! worlds.rs     which world and version a policy is; its optional hooks
//! v0_2.rs       switchyard:policy@0.2.0 served through 0.3
//! decision.rs   guest decision -> validated HttpDecision / ConnDecision
//! host_api.rs   per-store state and the host imports
//! view.rs       request/response/connection as the policy reads them
//! kv.rs         the per-policy key-value store
//! metrics.rs    the policies' own metrics and their collector
//! directory.rs  the pools and backends a policy may see
//! guest_log.rs  guest log lines -> tracing target `policy::<name>`
//! ```

pub mod bindings;
mod call;
pub mod decision;
pub mod directory;
pub mod engine;
pub mod files;
mod guest_log;
mod hooks;
mod host_api;
pub mod instances;
pub mod kv;
pub mod kv_handle;
pub mod kv_redis;
pub mod metrics;
pub mod rollout;
pub mod shadow;
mod smoke;
mod stats;
pub mod ticker;
mod v0_2;
pub mod view;
mod waits;
mod worlds;

use std::path::PathBuf;
use std::time::Duration;

pub use bindings::types;
pub use decision::{
    ConnDecision, DirectResponse, ForwardAction, HeaderEdit, HttpDecision, OverLimit, ReadBody,
    ResponseAction,
};
pub use directory::{Directory, OpenDirectory, StaticDirectory};
pub use engine::{
    Compiled, EngineSettings, Limits, Need, PolicyEngine, PoolLimits, policy_name, version_of,
};
pub use files::{FileCaps, own_private_dir, read_policy_files, read_policy_files_async};
pub use host_api::Frozen;
pub use instances::Policy;
pub use view::{ConnectionInfo, RequestView, ResponseView};

/// The version of the `switchyard:policy` WIT package this host implements
/// (`wit/`). A policy built against another version than this one or
/// [`WIT_VERSION_0_2`] is refused with the versions named, before its
/// imports and exports are type-checked.
pub const WIT_VERSION: &str = "0.3.0";

/// The previous version (`wit/v0.2/`), still loaded and served as it was.
pub const WIT_VERSION_0_2: &str = "0.2.0";

/// Which world a policy implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PolicyKind {
    /// `switchyard:policy/http-policy`, for `http` listeners.
    Http,
    /// `switchyard:policy/connection-policy`, for `tcp` and `udp` listeners.
    Connection,
}

impl PolicyKind {
    pub fn world(self) -> &'static str {
        match self {
            PolicyKind::Http => "switchyard:policy/http-policy",
            PolicyKind::Connection => "switchyard:policy/connection-policy",
        }
    }
}

/// Why one call into a policy failed. Never a panic, never forwarded: the
/// listener's `on_error` decides what the client sees.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy call exceeded its {0:?} deadline")]
    Timeout(Duration),
    #[error("policy exceeded its memory limit of {0} MiB")]
    Memory(usize),
    #[error("policy trapped: {0}")]
    Trap(String),
    #[error("policy could not be instantiated: {0}")]
    Instantiate(String),
    #[error("policy init refused its config: {0}")]
    Init(String),
    #[error("policy returned an invalid decision: {0}")]
    InvalidDecision(String),
    #[error("policy implements {}, not the hook called", .0.world())]
    WrongWorld(PolicyKind),
    #[error("policy overloaded: all {0} instances busy and the queue full or too slow")]
    Overloaded(usize),
    #[error("smoke test call failed: {0}")]
    SmokeTest(Box<PolicyError>),
}

impl PolicyError {
    /// The `outcome` label of `policy_calls_total`: `trap`, `timeout`,
    /// `overloaded` or `error`.
    pub fn outcome(&self) -> &'static str {
        match self {
            PolicyError::Timeout(_) => "timeout",
            PolicyError::Trap(_) | PolicyError::Memory(_) => "trap",
            PolicyError::Overloaded(_) => "overloaded",
            _ => "error",
        }
    }
}

/// Why a policy file was refused. Displays as `FILE: REASON`.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", file.display())]
pub struct LoadError {
    pub file: PathBuf,
    pub reason: String,
}

#[cfg(test)]
mod tests {
    #[test]
    fn wit_version_matches_the_wit_files() {
        let current = [
            include_str!("../../../wit/types.wit"),
            include_str!("../../../wit/host.wit"),
            include_str!("../../../wit/worlds.wit"),
        ];
        let frozen = [
            include_str!("../../../wit/v0.2/types.wit"),
            include_str!("../../../wit/v0.2/host.wit"),
            include_str!("../../../wit/v0.2/worlds.wit"),
        ];
        for (files, version) in [
            (current, super::WIT_VERSION),
            (frozen, super::WIT_VERSION_0_2),
        ] {
            for wit in files {
                assert!(
                    wit.contains(&format!("package switchyard:policy@{version};")),
                    "wit/ and the host's versions disagree"
                );
            }
        }
    }
}

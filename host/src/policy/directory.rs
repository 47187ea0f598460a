//! The policy's view of pools and backends: what the `backends` import lists
//! and what decisions are checked against. The upstream layer implements it
//! with live health and in-flight counts; `StaticDirectory` serves offline
//! tests and `switchyard check`.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use super::bindings::http_client::{CallError, IncomingResponse, OutgoingRequest};
use super::bindings::types::Backend;

/// What an `http-call` comes back with, later.
pub type CallFuture = Pin<Box<dyn Future<Output = Result<IncomingResponse, CallError>> + Send>>;

/// Pools as a policy may see them.
pub trait Directory: Send + Sync {
    /// Every backend of `pool` in configuration order; `None` if no such pool.
    fn backends(&self, pool: &str) -> Option<Vec<Backend>>;

    /// Whether `pool` exists and, when `backend` is given, has a backend of
    /// that name. The default walks [`Directory::backends`].
    fn check(&self, pool: &str, backend: Option<&str>) -> Result<(), String> {
        let Some(backends) = self.backends(pool) else {
            return Err(format!("no pool named {pool:?}"));
        };
        match backend {
            Some(b) if !backends.iter().any(|x| x.name == b) => {
                let names: Vec<&str> = backends.iter().map(|x| x.name.as_str()).collect();
                Err(format!(
                    "pool {pool:?} has no backend named {b:?} (backends: {})",
                    names.join(", ")
                ))
            }
            _ => Ok(()),
        }
    }

    /// A policy's `http-call` to `pool`. The default allows none: only
    /// a listener with `policy_call_pools` lends its policy a directory
    /// that makes calls (`upstream/calls.rs`).
    fn http_call(&self, pool: &str, _request: OutgoingRequest) -> CallFuture {
        let why = format!("pool {pool:?}: this policy may call no pool here");
        Box::pin(std::future::ready(Err(CallError::NotAllowed(why))))
    }
}

/// A fixed set of pools, every backend healthy and idle.
#[derive(Debug, Default, Clone)]
pub struct StaticDirectory {
    pools: BTreeMap<String, Vec<Backend>>,
}

impl StaticDirectory {
    pub fn new(pools: BTreeMap<String, Vec<Backend>>) -> Self {
        StaticDirectory { pools }
    }
}

impl Directory for StaticDirectory {
    fn backends(&self, pool: &str) -> Option<Vec<Backend>> {
        self.pools.get(pool).cloned()
    }
}

/// Knows no pools and accepts every name: for running a policy offline
/// without a daemon configuration.
#[derive(Debug, Default, Clone, Copy)]
pub struct OpenDirectory;

impl Directory for OpenDirectory {
    fn backends(&self, _pool: &str) -> Option<Vec<Backend>> {
        None
    }

    fn check(&self, _pool: &str, _backend: Option<&str>) -> Result<(), String> {
        Ok(())
    }
}
